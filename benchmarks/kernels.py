"""LutMatMul in ONNX Runtime vs ORT's own MatMulNBits and fp32 MatMul, in one run.

For each shape, row count M and thread count it times (median of repeated runs):

* ``edgepet-KERNEL`` — ``ai.edgepet.LutMatMul`` at 1, 2, 3, 4 bits and ternary, once per
  vector kernel this CPU has (avx512, avx2, neon; ``--kernels`` picks);
* ``ort-nbits`` — ``com.microsoft.MatMulNBits`` at 2 and 4 bits, block 32 and 128,
  with its default path and with ``mlas.use_lut_gemm=1``;
* ``ort-fp32`` — a plain MatMul with the float weight;

and each one's relative error against the exact product with its own dequantized
weights. Ratios compare edgepet at b bits with ORT's fastest path at the same bits
(1-bit and ternary against ORT 2-bit, ORT's narrowest). Noisy machines: compare
ratios from one run, not absolute times across runs.

    python benchmarks/kernels.py                 # the full table (a few minutes)
    python benchmarks/kernels.py --json out.json # also write every measurement
    python benchmarks/kernels.py --smoke         # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgepet import runtime
from edgepet.exporters.onnx import linear_model
from edgepet.kernels import available_kernels
from edgepet.quant import quantize

SHAPES = {
    "gemv-4096": (4096, 4096),
    "smollm2-up 576->1536": (576, 1536),
    "smollm2-down 1536->576": (1536, 576),
    "smollm2-attn 576->576": (576, 576),
}
EDGEPET_BITS = [1, 2, 3, 4, "ternary"]
ORT_BITS = [2, 4]
BLOCKS = [32, 128]
ROUNDS = 3


@dataclass
class Result:
    shape: str
    k: int
    n: int
    m: int
    threads: int
    contender: str
    bits: str
    block: int
    median_ms: float
    rel_err: float


def time_runs(sess: ort.InferenceSession, x: np.ndarray, budget_s: float) -> list[float]:
    """Seconds of each sess.run within a time budget (at least 3 runs)."""
    feed = {sess.get_inputs()[0].name: x}
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 100):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def options(threads: int, lut_gemm: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if lut_gemm:
        opts.add_session_config_entry("mlas.use_lut_gemm", "1")
    return opts


def _one_node_model(node, k: int, n: int, inits) -> bytes:
    graph = helper.make_graph(
        [node], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def matmul_nbits(w: np.ndarray, bits: int, block: int) -> tuple[bytes, np.ndarray]:
    """A MatMulNBits model for w [N, K] (round to nearest, default zero point) and
    the float weights its codes stand for: (q - 2^(bits-1)) * scale."""
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, blocks, block)
    zero = 1 << (bits - 1)
    scale = np.abs(grouped).max(axis=2) / zero
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(grouped / scale[:, :, None]) + zero, 0, (1 << bits) - 1).astype(np.uint8)
    per_byte = 8 // bits
    q4 = q.reshape(n, blocks, block // per_byte, per_byte).astype(np.uint16)
    packed = np.zeros(q4.shape[:3], np.uint16)
    for i in range(per_byte):  # element i of a byte sits at bits [i*bits, (i+1)*bits)
        packed |= q4[..., i] << (i * bits)
    dequant = ((q.astype(np.float32) - zero) * scale[:, :, None]).reshape(n, -1)[:, :k]
    node = helper.make_node(
        "MatMulNBits", ["x", "W", "S"], ["y"], domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block,
    )
    inits = [
        numpy_helper.from_array(packed.astype(np.uint8), "W"),
        numpy_helper.from_array(scale.astype(np.float32).reshape(-1), "S"),
    ]
    return _one_node_model(node, k, n, inits), dequant


def fp32_matmul(w: np.ndarray) -> bytes:
    n, k = w.shape
    node = helper.make_node("MatMul", ["x", "Wt"], ["y"])
    return _one_node_model(node, k, n, [numpy_helper.from_array(np.ascontiguousarray(w.T), "Wt")])


def edgepet_session(model: bytes, threads: int, kernel: str) -> ort.InferenceSession:
    """A session whose LutMatMul nodes use the named kernel (chosen at session start)."""
    before = os.environ.get("EDGEPET_KERNEL")
    os.environ["EDGEPET_KERNEL"] = kernel
    try:
        return runtime.InferenceSession(model, options=options(threads))
    finally:
        if before is None:
            del os.environ["EDGEPET_KERNEL"]
        else:
            os.environ["EDGEPET_KERNEL"] = before


def session(contender: str, model: bytes, threads: int) -> ort.InferenceSession:
    """A session for one contender (edgepet-KERNEL, ort-nbits, ort-nbits-lut, ort-fp32)."""
    if contender.startswith("edgepet-"):
        return edgepet_session(model, threads, contender.removeprefix("edgepet-"))
    return ort.InferenceSession(model, options(threads, contender == "ort-nbits-lut"),
                                providers=["CPUExecutionProvider"])


def run(shapes: dict[str, tuple[int, int]], ms: list[int], threads_list: list[int],
        kernel_names: list[str], budget_s: float, progress) -> list[Result]:
    results: list[Result] = []
    rng = np.random.default_rng(0)
    for shape_name, (k, n) in shapes.items():
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        models: list[tuple[str, str, int, bytes, np.ndarray]] = []
        for bits in EDGEPET_BITS:
            for block in BLOCKS:
                qt = quantize(w, bits, block if block < k else "per-row", symmetric=True)
                model = linear_model(qt).SerializeToString()
                for kernel in kernel_names:
                    models.append((f"edgepet-{kernel}", str(bits), block, model,
                                   qt.dequantize()))
        for bits in ORT_BITS:
            for block in BLOCKS:
                model, dq = matmul_nbits(w, bits, block)
                models.append(("ort-nbits", str(bits), block, model, dq))
                models.append(("ort-nbits-lut", str(bits), block, model, dq))
        models.append(("ort-fp32", "32", 0, fp32_matmul(w), w))
        for threads in threads_list:
            for m in ms:
                x = rng.standard_normal((m, k)).astype(np.float32)
                errors = [0.0] * len(models)
                # Rounds over all contenders, so that a slow spell of a shared machine
                # hits every contender alike; the median is taken over all rounds. One
                # session lives at a time: ONNX Runtime's idle per-session workers keep
                # spinning and would take the cores from the next session's.
                times: list[list[float]] = [[] for _ in models]
                for r in range(ROUNDS):
                    progress(f"{shape_name} M={m} threads={threads} round {r + 1}/{ROUNDS}")
                    for i, (contender, _bits, _block, model, dq) in enumerate(models):
                        sess = session(contender, model, threads)
                        y = sess.run(None, {"x": x})[0]
                        if r == 0:
                            errors[i] = rel_err(y, x @ dq.T)
                        times[i] += time_runs(sess, x, budget_s / ROUNDS)
                        del sess
                for entry, err, t in zip(models, errors, times, strict=True):
                    contender, bits, block = entry[:3]
                    results.append(Result(shape_name, k, n, m, threads, contender, bits, block,
                                          statistics.median(t) * 1e3, err))
    return results


def ratios(results: list[Result]) -> list[dict]:
    """edgepet at b bits vs ORT's fastest path at the same bits (2-bit for 1-bit/ternary)."""
    rows = []
    keys = sorted({(r.shape, r.m, r.threads) for r in results}, key=str)
    for shape, m, threads in keys:
        here = [r for r in results if (r.shape, r.m, r.threads) == (shape, m, threads)]
        ort_best = {}
        for r in here:
            if r.contender.startswith("ort-nbits"):
                best = ort_best.get(r.bits)
                if best is None or r.median_ms < best.median_ms:
                    ort_best[r.bits] = r
        fp32 = next(r for r in here if r.contender == "ort-fp32")
        ours_by_kernel = sorted({r.contender for r in here if r.contender.startswith("edgepet")})
        for contender, bits in itertools.product(ours_by_kernel, map(str, EDGEPET_BITS)):
            ours = min((r for r in here if r.contender == contender and r.bits == bits),
                       key=lambda r: r.median_ms)
            peer_bits = bits if bits in ort_best else "2"
            peer = ort_best[peer_bits]
            rows.append({
                "shape": shape, "m": m, "threads": threads, "bits": bits,
                "kernel": contender.removeprefix("edgepet-"),
                "edgepet_ms": ours.median_ms, "edgepet_block": ours.block,
                "edgepet_err": ours.rel_err,
                "ort_bits": peer_bits, "ort_ms": peer.median_ms,
                "ort_path": f"{peer.contender}/{peer.block}", "ort_err": peer.rel_err,
                "speedup_vs_ort": peer.median_ms / ours.median_ms,
                "speedup_vs_fp32": fp32.median_ms / ours.median_ms,
            })
    return rows


def print_tables(results: list[Result], rows: list[dict]) -> None:
    print("\nAll measurements (median ms, relative error vs exact dequantized product)")
    print(f"{'shape':24} {'M':>3} {'thr':>3} {'contender':16} {'bits':>7} {'block':>5}"
          f" {'ms':>9} {'rel.err':>8}")
    for r in results:
        print(f"{r.shape:24} {r.m:>3} {r.threads:>3} {r.contender:16} {r.bits:>7} {r.block:>5}"
              f" {r.median_ms:>9.3f} {r.rel_err:>8.4f}")
    print("\nedgepet vs ORT's fastest MatMulNBits at the same bits (1-bit/ternary vs ORT 2-bit)")
    print(f"{'shape':24} {'M':>3} {'thr':>3} {'kernel':>7} {'bits':>7} {'edgepet ms':>10}"
          f" {'ORT ms':>9} {'ORT path':>18} {'speedup':>8} {'vs fp32':>8} {'err':>7}")
    for row in rows:
        print(f"{row['shape']:24} {row['m']:>3} {row['threads']:>3} {row['kernel']:>7}"
              f" {row['bits']:>7}"
              f" {row['edgepet_ms']:>10.3f} {row['ort_ms']:>9.3f} {row['ort_path']:>18}"
              f" {row['speedup_vs_ort']:>7.2f}x {row['speedup_vs_fp32']:>7.2f}x"
              f" {row['edgepet_err']:>7.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all measurements and ratios to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    vector = [k for k in available_kernels() if k != "reference"] or ["reference"]
    parser.add_argument("--kernels", default=",".join(vector),
                        help=f"edgepet kernels to time (default: {','.join(vector)})")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    kernel_names = args.kernels.split(",")
    unknown = set(kernel_names) - set(available_kernels())
    if unknown:
        parser.error(f"kernel(s) {sorted(unknown)} not available here: {available_kernels()}")
    if args.smoke:
        shapes, ms, budget = {"smoke 256->96": (256, 96)}, [1, 3], 0.01
    else:
        shapes, ms, budget = SHAPES, [1, 32], args.budget

    def progress(msg: str) -> None:
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    results = run(shapes, ms, threads, kernel_names, budget, progress)
    print("\r\033[K", end="", file=sys.stderr)
    rows = ratios(results)
    print(f"edgepet benchmark — {platform.processor() or platform.machine()}, "
          f"onnxruntime {ort.__version__}")
    print_tables(results, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "machine": platform.machine(),
                       "results": [asdict(r) for r in results], "ratios": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
