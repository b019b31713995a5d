"""Turning quantized and tuned models into deployable ONNX graphs and bundles."""

from edgepet.exporters import onnx

__all__ = ["onnx"]
