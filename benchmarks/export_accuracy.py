"""Output error of exported bundles against PyTorch, per example model and bit width.

Exports each built-in example (random weights: the worst case for quantization) at
every bit width with both quantizers, verifies the bundle on its reference data and
prints the relative L2 error against PyTorch fp32, and the kernels' own share (the
bundle against the same graph with dequantized float weights).

    python benchmarks/export_accuracy.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from edgepet.exporters.pipeline import export

MODELS = ("mlp", "vit", "llama")
BITS = (4, 3, 2, "ternary", 1)
QUANTIZERS = ("search", "rtn")


def main() -> int:
    print(f"{'model':6} {'bits':>7} {'quantizer':>9} {'vs PyTorch':>11} {'vs dequantized':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            for bits in BITS:
                for quantizer in QUANTIZERS:
                    out = Path(tmp) / f"{model}-{bits}-{quantizer}"
                    bundle = export(f"example:{model}", out, target="x86-avx2", bits=bits,
                                    group_size=64, quantizer=quantizer)
                    (result,) = [r for r in bundle.verify() if r.adapter is None]
                    print(f"{model:6} {bits!s:>7} {quantizer:>9} {result.vs_pytorch:>11.3f}"
                          f" {result.vs_quantized:>15.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
