"""The identity of edgepet's ONNX operator, for the code that writes graphs and the code
that reads them: ``ai.edgepet.LutMatMul``, op-set version 1 (its contract:
docs/operator.md; its storage is versioned separately, by the op library's ABI)."""

DOMAIN = "ai.edgepet"
OP_TYPE = "LutMatMul"
OP_VERSION = 1

__all__ = ["DOMAIN", "OP_TYPE", "OP_VERSION"]
