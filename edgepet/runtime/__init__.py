"""Running edgepet models: ONNX Runtime sessions with the op library loaded."""

from edgepet.runtime.session import InferenceSession, op_library_path, session_options

__all__ = ["InferenceSession", "op_library_path", "session_options"]
