"""edgepet: parameter-efficiently tuned models at 1-4 bits on edge CPUs."""

from edgepet import kernels, quant, runtime

__version__ = "0.1.0"

__all__ = ["__version__", "kernels", "quant", "runtime", "exporters"]


def __getattr__(name: str):
    # exporters pulls in onnx graph tooling; load it on first use.
    if name == "exporters":
        import importlib

        return importlib.import_module("edgepet.exporters")
    raise AttributeError(f"module 'edgepet' has no attribute {name!r}")
