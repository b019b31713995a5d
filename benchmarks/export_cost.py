"""What an export costs: wall time, peak memory, and how often each file is hashed.

Exports a Llama-style example with ~160 MB of float weights (random; the cost does not
depend on the values) to a 4-bit bundle in a child process, and prints the export's
wall time, the child's peak RSS, the bundle's size, and how many times the exporter
computed a file's SHA-256 and wrote ``manifest.json`` — the work an export should do
once. Run it before and after a change to the export pipeline, on the same machine:

    python benchmarks/export_cost.py            # ~160 MB of weights
    python benchmarks/export_cost.py --dim 512  # smaller, faster
    python benchmarks/export_cost.py --tasks 2  # two switchable 1-bit LoRA tasks
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from edgepet.device_tests.environment import cpu_summary

_CHILD = r"""
import collections, json, resource, sys, time
from pathlib import Path

import edgepet.exporters.bundle as writer
import edgepet.runtime.bundle as reader
from edgepet.exporters import examples
from edgepet.exporters.pipeline import export

args = json.loads(sys.argv[1])
counts = collections.Counter()
real_hash = reader.sha256_file

def counting_hash(path):
    counts["sha256_file"] += 1
    return real_hash(path)

reader.sha256_file = counting_hash
writer.sha256_file = counting_hash
real_write = Path.write_text

def counting_write(self, *a, **k):
    if self.name == "manifest.json":
        counts["manifest_writes"] += 1
    return real_write(self, *a, **k)

Path.write_text = counting_write
model = examples.TinyLlama(vocab=args["vocab"], dim=args["dim"], depth=args["depth"],
                           heads=args["heads"], ffn=args["ffn"]).eval()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
tasks = None
if args["tasks"]:
    from edgepet import pet
    pet.apply(model, "lora", target_modules=["q_proj", "v_proj"], r=8, bits=1)
    tasks = examples.random_lowbit_tasks(model, {f"task{i}": i for i in range(args["tasks"])})
    model = next(iter(tasks.values()))
start = time.perf_counter()
bundle = export(model, args["out"], target="x86-avx2", bits=4, quantizer="rtn", adapters=tasks)
seconds = time.perf_counter() - start
files = sum(f.stat().st_size for f in Path(args["out"]).rglob("*") if f.is_file())
print(json.dumps({
    "weights_mb": weights / 1e6, "export_s": seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "bundle_mb": files / 1e6, "files": len(bundle.manifest["files"]),
    "sha256_calls": counts["sha256_file"], "manifest_writes": counts["manifest_writes"],
}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=0,
                        help="switchable 1-bit LoRA tasks on q/v (0: a plain model)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(vars(args), out=str(Path(tmp) / "bundle"))
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = cpu_summary()
    print(f"cpu: {cpu['model']} ({' '.join(cpu['isa'])}), load {cpu['load']}; "
          f"python {platform.python_version()}")
    for key, value in result.items():
        print(f"{key:16} {value:.1f}" if isinstance(value, float) else f"{key:16} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
