"""edgepet: parameter-efficiently tuned models at 1-4 bits on edge CPUs.

Subpackages load on first use, so that ``edgepet.pet`` works without the native
build and a device never needs torch.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "kernels", "quant", "runtime", "exporters", "pet", "targets", "device_tests", "api", "cli",
)
#: Functions re-exported from edgepet.api: edgepet.export(...), edgepet.load(OUT).
_API = ("export", "load")

__all__ = ["__version__", *_SUBMODULES, *_API]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"edgepet.{name}")
    if name in _API:
        return getattr(importlib.import_module("edgepet.api"), name)
    raise AttributeError(f"module 'edgepet' has no attribute {name!r}")
