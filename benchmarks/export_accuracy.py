"""Output error of exported bundles against PyTorch, per example model and bit width.

Exports each built-in example (random weights: the worst case for quantization) at
every bit width with both quantizers, verifies the bundle on its reference data and
prints the relative L2 error against PyTorch fp32, and the kernels' own share (the
bundle against the same graph with dequantized float weights). Then exports a TinyLlama
with two 1-bit LoRA tasks once and switches between them at run time, with the base in
float and at 4 bits, printing each task's error against its own and the other task's
PyTorch output.

    python benchmarks/export_accuracy.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from edgepet.exporters.pipeline import export
from edgepet.runtime.bundle import relative_error

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
    adapter_switching()
    return 0


def adapter_switching() -> None:

    import torch

    from edgepet import pet
    from edgepet.exporters import examples

    tuned = examples.TinyLlama().eval()
    pet.apply(tuned, "lora", target_modules=["q_proj", "v_proj", "down_proj"], r=8, bits=1)
    tasks = examples.random_lowbit_tasks(tuned, {"sst2": 1, "mnli": 2})
    print(f"\n{'base':7} {'task':5} {'vs its PyTorch':>15} {'vs other task':>14} {'file kB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for base, keep in (("float", ["*"]), ("4-bit", [])):
            bundle = export(tasks["sst2"], Path(tmp) / base, target="x86-avx2", adapters=tasks,
                            keep=keep, bits=4)
            session = bundle.session()
            inputs = bundle.reference_inputs()
            with torch.no_grad():
                want = {n: m(torch.from_numpy(inputs["input_ids"])).numpy()
                        for n, m in tasks.items()}
            for name in tasks:
                other = next(n for n in tasks if n != name)
                session.set_adapter(name)
                got = session.run(inputs)["output"]
                size = bundle.adapter_path(name).stat().st_size / 1e3
                print(f"{base:7} {name:5} {relative_error([got], [want[name]]):>15.4f}"
                      f" {relative_error([got], [want[other]]):>14.3f} {size:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
