"""Running edgepet models and bundles: ONNX Runtime sessions with the op library loaded,
the bundle reader and its checks (no torch, no exporter needed)."""

from edgepet.runtime.bundle import Bundle, BundleError, BundleSession, load
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.session import InferenceSession, op_library_path, session_options

__all__ = [
    "BadInputError",
    "Bundle",
    "BundleError",
    "BundleSession",
    "InferenceSession",
    "load",
    "op_library_path",
    "session_options",
]
