"""Turning quantized and tuned models into deployable ONNX graphs and bundles.

Submodules load on first use: reading a bundle on a device needs neither torch nor
the writer side (``torch_export``, ``examples`` import torch).
"""

import importlib

_SUBMODULES = (
    "onnx",
    "rewrite",
    "adapters",
    "bundle",
    "manifest",
    "torch_export",
    "pipeline",
    "examples",
)

__all__ = list(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"edgepet.exporters.{name}")
    raise AttributeError(f"module 'edgepet.exporters' has no attribute {name!r}")
