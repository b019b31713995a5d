"""LutMatMul in ONNX Runtime vs ORT's MatMulNBits as its users run it, in one run.

For each shape, row count M and thread count it times (medians over interleaved rounds):

* ``edgepet-KERNEL`` — ``ai.edgepet.LutMatMul`` at 1, 2, 3, 4 bits and ternary, group 64,
  symmetric (odd levels; ``--zero-level``: 2-4 bits on the zero-level grid of ORT's
  symmetric ``MatMulNBits``), once per vector kernel this CPU has and once as ``auto``
  (what a session picks by itself, which may be a different kernel per bit width;
  ``--kernels`` picks);
* ``ort-nbits`` — ``com.microsoft.MatMulNBits`` with ``accuracy_level=4`` (int8
  activations: what ORT GenAI's model builder writes), 2 and 4 bits, block 32/64/128,
  with and without zero points, on ORT's default path and with ``mlas.use_lut_gemm=1``;
* ``ort-quantizer`` — the model ORT's own ``MatMulNBitsQuantizer(accuracy_level=4)``
  makes of the fp32 MatMul model (its defaults otherwise: block 128, asymmetric);
* ``ort-fp32`` — the plain fp32 MatMul;

and each one's relative error against the exact product with its own dequantized
weights. An ORT configuration is *valid* when it runs and its error stays below its
own quantization error (the distance of its dequantized product from the fp32 one);
ratios compare edgepet at b bits with the fastest valid ORT configuration at the same
bits (1-bit and ternary against ORT 2-bit, 3-bit against ORT 4-bit), and name it.

Then the memory-bound case: a stack of Llama-3.2-1B-shaped projections (16 layers of
2048->2048, 2048->512 x2, 2048->2048, 2048->8192 x2, 8192->2048), M=1, run one after
the other in one graph, reported as GB/s of weight bytes read (codes + scales + zero
points) against this machine's read bandwidth measured in the same run, and as
tokens/s-equivalent against ORT.

    python benchmarks/kernels.py                 # the full table (10-20 minutes)
    python benchmarks/kernels.py --json out.json # also write every measurement
    python benchmarks/kernels.py --smoke         # tiny shapes, seconds

Run as a script it sets ``OPENBLAS_NUM_THREADS=1`` and ``OMP_NUM_THREADS=1`` unless they
are set: numpy's idle BLAS threads would otherwise spin on the cores being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

if __name__ == "__main__":
    # numpy's OpenBLAS keeps its worker threads spinning for a while after each product
    # (the error checks' x @ w.T), and on a 2-core machine a spinning worker takes the
    # core a 2-thread session needs: 576->1536 2-bit at 2 threads measured 11.2 us with
    # them and 8.2 us without. Set before numpy loads; an explicit setting wins.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402 (after the thread settings above)
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgepet import runtime
from edgepet.device_tests.environment import cpu_summary
from edgepet.exporters.onnx import DOMAIN, ONNX_OPSET, OP_VERSION, linear_model, lut_matmul_node
from edgepet.kernels import available_kernels, read_bandwidth
from edgepet.quant import quantize
from edgepet.quant.tensor import ZERO_LEVEL_BITS, QuantizedTensor

SHAPES = {
    "4096x4096": (4096, 4096),
    "smollm2 576->576": (576, 576),
    "smollm2 576->1536": (576, 1536),
    "smollm2 1536->576": (1536, 576),
    "smollm2 576->192": (576, 192),
}
EDGEPET_BITS = [1, 2, 3, 4, "ternary"]
EDGEPET_GROUP = 64
ORT_BITS = [2, 4]
ORT_BLOCKS = [32, 64, 128]
#: The ORT bits edgepet's widths are compared with.
PEER_BITS = {"1": "2", "2": "2", "ternary": "2", "3": "4", "4": "4"}
ROUNDS = 3
#: After the first round, ORT configurations slower than this times the fastest valid
#: one at their bits are dropped (they cannot win; timing them costs minutes).
KEEP_WITHIN = 1.3
#: Llama-3.2-1B: hidden 2048, 8 KV heads of 64 (512), MLP 8192, 16 layers.
LLAMA_LAYER = [("q", 2048, 2048), ("k", 2048, 512), ("v", 2048, 512), ("o", 2048, 2048),
               ("gate", 2048, 8192), ("up", 2048, 8192), ("down", 8192, 2048)]
LLAMA_LAYERS = 16


@dataclass
class Contender:
    """One model to time: who runs it, how, and what its codes stand for."""

    name: str            # edgepet-KERNEL, ort-nbits, ort-quantizer, ort-fp32
    config: str          # what distinguishes it within its name (block, zp, path)
    bits: str
    model: bytes
    dequantized: np.ndarray  # [N, K] float weights its codes stand for
    bits_per_weight: float
    session_config: dict[str, str] = field(default_factory=dict)
    kernel: str = ""


@dataclass
class Result:
    shape: str
    k: int
    n: int
    m: int
    threads: int
    contender: str
    config: str
    bits: str
    bits_per_weight: float
    median_ms: float
    rel_err: float
    quant_err: float
    valid: bool
    runs: int


# ----------------------------------------------------------------------------- models

def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def options(threads: int, config: dict[str, str] | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return opts


def _model(nodes, k: int, n: int, inits, opsets) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=opsets)


ORT_OPSETS = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("com.microsoft", 1)]
EDGEPET_OPSETS = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, OP_VERSION)]


def pack_nbits(q: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits packing of codes q [..., L] (L a multiple of 8/bits): element i of a
    byte sits at bits [i*bits, (i+1)*bits)."""
    per_byte = 8 // bits
    q = q.reshape(*q.shape[:-1], q.shape[-1] // per_byte, per_byte).astype(np.uint16)
    packed = np.zeros(q.shape[:-1], np.uint16)
    for i in range(per_byte):
        packed |= q[..., i] << (i * bits)
    return packed.astype(np.uint8)


def unpack_nbits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of pack_nbits, keeping the first `count` codes of the last axis."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    q = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return q.reshape(*packed.shape[:-1], -1)[..., :count]


def nbits_dequantize(b: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                     bits: int, block: int, k: int, n: int) -> np.ndarray:
    """The float weights [N, K] a MatMulNBits node's B, scales and uint8 zero points
    stand for (ORT's contract: (q - zp) * scale, zp = 2^(bits-1) when absent)."""
    blocks = -(-k // block)
    q = unpack_nbits(b.reshape(n, blocks, -1), bits, block).astype(np.float32)
    s = scales.reshape(n, blocks).astype(np.float32)
    if zeros is None:
        z = np.full((n, blocks), 1 << (bits - 1), np.float32)
    else:
        z = unpack_nbits(zeros.reshape(n, -1), bits, blocks).astype(np.float32)
    return ((q - z[:, :, None]) * s[:, :, None]).reshape(n, -1)[:, :k]


def nbits_weights(w: np.ndarray, bits: int, block: int, asymmetric: bool):
    """Round-to-nearest MatMulNBits weights for w [N, K]: (B, scales, zero points)."""
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, blocks, block)
    top = (1 << bits) - 1
    if asymmetric:
        lo, hi = np.minimum(grouped.min(axis=2), 0), np.maximum(grouped.max(axis=2), 0)
        scale = (hi - lo) / top
        scale[scale == 0] = 1.0
        zero = np.clip(np.rint(-lo / scale), 0, top)
    else:
        zero = np.full((n, blocks), 1 << (bits - 1), np.float32)
        scale = np.abs(grouped).max(axis=2) / (1 << (bits - 1))
        scale[scale == 0] = 1.0
    q = np.clip(np.rint(grouped / scale[:, :, None]) + zero[:, :, None], 0, top)
    b = pack_nbits(q.astype(np.uint8), bits)
    zeros = None
    if asymmetric:
        per_row = -(-blocks * bits // 8) * (8 // bits)
        zpad = np.zeros((n, per_row), np.uint8)
        zpad[:, :blocks] = zero
        zeros = pack_nbits(zpad, bits).reshape(-1)
    return b, scale.astype(np.float32).reshape(-1), zeros


def nbits_node(name: str, x: str, y: str, k: int, n: int, bits: int, block: int,
               b: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None):
    inits = [numpy_helper.from_array(b, f"{name}.B"),
             numpy_helper.from_array(scales, f"{name}.scales")]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zeros, f"{name}.zero_points"))
    node = helper.make_node(
        "MatMulNBits", [x] + [i.name for i in inits], [y], name=name, domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block, accuracy_level=4,
    )
    return node, inits


def model_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer but A's: what a product reads from memory."""
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def ort_contenders(w: np.ndarray, ort_bits: list[int] = ORT_BITS) -> list[Contender]:
    n, k = w.shape
    out = []
    paths = {"default": {}, "lut": {"mlas.use_lut_gemm": "1"}}
    for bits in ort_bits:
        for block in ORT_BLOCKS:
            for asym in (False, True):
                b, s, z = nbits_weights(w, bits, block, asym)
                node, inits = nbits_node("proj", "x", "y", k, n, bits, block, b, s, z)
                model = _model([node], k, n, inits, ORT_OPSETS)
                dq = nbits_dequantize(b, s, z, bits, block, k, n)
                bpw = 8 * model_weight_bytes(model) / (n * k)
                data = model.SerializeToString()
                for path, config in paths.items():
                    out.append(Contender("ort-nbits", f"b{block}{'/zp' if asym else ''}/{path}",
                                         str(bits), data, dq, bpw, config))
    for bits in ort_bits:
        model, dq = quantizer_model(w, bits)
        bpw = 8 * model_weight_bytes(model) / (n * k)
        for path, config in paths.items():
            out.append(Contender("ort-quantizer", f"b128/zp/{path}", str(bits),
                                 model.SerializeToString(), dq, bpw, config))
    return out


def fp32_model(w: np.ndarray) -> onnx.ModelProto:
    n, k = w.shape
    node = helper.make_node("MatMul", ["x", "Wt"], ["y"])
    return _model([node], k, n, [numpy_helper.from_array(np.ascontiguousarray(w.T), "Wt")],
                  [helper.make_opsetid("", ONNX_OPSET)])


def quantizer_model(w: np.ndarray, bits: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """What a user gets from ORT's own quantizer at accuracy_level=4, and its weights."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    n, k = w.shape
    config = DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=False, accuracy_level=4,
                                          bits=bits)
    quantizer = MatMulNBitsQuantizer(fp32_model(w), algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    b, s = arrays[node.input[1]], arrays[node.input[2]]
    z = arrays[node.input[3]] if len(node.input) > 3 and node.input[3] else None
    dq = nbits_dequantize(b, s, z, attrs["bits"], attrs["block_size"], k, n)
    return model, dq


def edgepet_contenders(w: np.ndarray, kernels: list[str],
                       bits_list: list = EDGEPET_BITS, zero_level: bool = False
                       ) -> list[Contender]:
    n, k = w.shape
    out = []
    for bits in bits_list:
        qt = quantize(w, bits, EDGEPET_GROUP if EDGEPET_GROUP < k else "per-row",
                      symmetric=True, zero_level=zero_level and bits in ZERO_LEVEL_BITS)
        model = linear_model(qt)
        bpw = 8 * model_weight_bytes(model) / (n * k)
        data = model.SerializeToString()
        for kernel in kernels:
            out.append(Contender(f"edgepet-{kernel}", f"g{EDGEPET_GROUP}", str(bits), data,
                                 qt.dequantize(), bpw, kernel=kernel))
    return out


# ----------------------------------------------------------------------------- timing

def session(c: Contender, threads: int) -> ort.InferenceSession:
    """A session for one contender; edgepet's kernel is chosen at session start."""
    if not c.kernel:
        return ort.InferenceSession(c.model, options(threads, c.session_config),
                                    providers=["CPUExecutionProvider"])
    before = os.environ.get("EDGEPET_KERNEL")
    os.environ["EDGEPET_KERNEL"] = c.kernel
    try:
        return runtime.InferenceSession(c.model, options=options(threads))
    finally:
        if before is None:
            del os.environ["EDGEPET_KERNEL"]
        else:
            os.environ["EDGEPET_KERNEL"] = before


def time_runs(sess: ort.InferenceSession, x: np.ndarray, budget_s: float,
              at_least: int = 3, at_most: int = 200) -> list[float]:
    """Seconds of each run within a time budget.

    Runs go through an IO binding with the input bound once, as ORT GenAI and other
    latency-minded users run sessions: the per-call Python cost of converting feeds and
    fetches would otherwise be a large, equal share of every small product.
    """
    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cpu")
    sess.run_with_iobinding(binding)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < at_least or (time.perf_counter() - start < budget_s
                                     and len(times) < at_most):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    return times


def call_floor_ms(k: int, m: int, threads: int, budget_s: float) -> float:
    """Median ms of a session whose one node is an Identity: the fixed cost of a call
    that every contender pays before its product starts."""
    node = helper.make_node("Identity", ["x"], ["y"])
    model = _model([node], k, k, [], [helper.make_opsetid("", ONNX_OPSET)])
    sess = ort.InferenceSession(model.SerializeToString(), options(threads),
                                providers=["CPUExecutionProvider"])
    x = np.zeros((m, k), np.float32)
    return statistics.median(time_runs(sess, x, budget_s)) * 1e3


def measure_cell(contenders: list[Contender], w: np.ndarray, x: np.ndarray, threads: int,
                 budget_s: float, rounds: int, progress) -> list[tuple[Contender, list[float],
                                                                      float, float, bool]]:
    """Interleaved rounds over all contenders, one session alive at a time (ORT's idle
    per-session workers keep spinning and would take the cores from the next one).
    ORT configurations far from their bits' fastest valid one are dropped after round 1."""
    exact = x @ w.T
    errors: dict[int, tuple[float, float, bool]] = {}
    times: dict[int, list[float]] = {i: [] for i in range(len(contenders))}
    alive = list(range(len(contenders)))
    for r in range(rounds):
        for i in alive:
            c = contenders[i]
            progress(f"round {r + 1}/{rounds}: {c.name} {c.bits} {c.config}")
            try:
                sess = session(c, threads)
                if r == 0:
                    y = sess.run(None, {"x": x})[0]
                    own = x @ c.dequantized.T
                    err, qerr = rel_err(y, own), rel_err(own, exact)
                    errors[i] = (err, qerr, bool(np.isfinite(err)) and err < max(qerr, 1e-4))
                times[i] += time_runs(sess, x, budget_s / rounds)
                del sess
            except Exception as e:  # noqa: BLE001 (a configuration ORT refuses is invalid)
                errors[i] = (float("nan"), float("nan"), False)
                progress(f"{c.name} {c.bits} {c.config} failed: {e}")
        if r == 0:
            alive = _prune(contenders, alive, errors, times)
    return [(contenders[i], times[i], *errors[i]) for i in range(len(contenders))]


def _prune(contenders, alive, errors, times) -> list[int]:
    best: dict[str, float] = {}
    for i in alive:
        c = contenders[i]
        if c.name.startswith("ort-") and errors[i][2] and times[i] and c.bits != "32":
            best[c.bits] = min(best.get(c.bits, np.inf), statistics.median(times[i]))
    keep = []
    for i in alive:
        c = contenders[i]
        if not errors[i][2] and not c.name.startswith("edgepet"):
            continue
        if c.name.startswith("ort-") and c.bits in best:
            if statistics.median(times[i]) > KEEP_WITHIN * best[c.bits]:
                continue
        keep.append(i)
    return keep


def run(shapes: dict[str, tuple[int, int]], ms: list[int], threads_list: list[int],
        kernel_names: list[str], budget_s: float, rounds: int, progress,
        bits_list: list = EDGEPET_BITS, zero_level: bool = False) -> list[Result]:
    results: list[Result] = []
    rng = np.random.default_rng(0)
    for shape_name, (k, n) in shapes.items():
        progress(f"{shape_name}: building models")
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        fp32 = fp32_model(w)
        ort_bits = sorted({int(PEER_BITS[str(b)]) for b in bits_list})
        contenders = (edgepet_contenders(w, kernel_names, bits_list, zero_level)
                      + ort_contenders(w, ort_bits)
                      + [Contender("ort-fp32", "MatMul", "32", fp32.SerializeToString(), w, 32.0)])
        for threads in threads_list:
            for m in ms:
                x = rng.standard_normal((m, k)).astype(np.float32)

                def cell_progress(msg, shape_name=shape_name, m=m, threads=threads):
                    progress(f"{shape_name} M={m} threads={threads} {msg}")

                floor = Contender("call-floor", "Identity", "-", b"", np.zeros(0), 0.0)
                results.append(Result(shape_name, k, n, m, threads, floor.name, floor.config,
                                      floor.bits, 0.0, call_floor_ms(k, m, threads, budget_s),
                                      0.0, 0.0, True, 1))
                for c, t, err, qerr, valid in measure_cell(contenders, w, x, threads, budget_s,
                                                           rounds, cell_progress):
                    results.append(Result(shape_name, k, n, m, threads, c.name, c.config,
                                          c.bits, c.bits_per_weight,
                                          statistics.median(t) * 1e3 if t else float("nan"),
                                          err, qerr, valid, len(t)))
    return results


def ratios(results: list[Result]) -> list[dict]:
    """edgepet at b bits vs the fastest valid ORT configuration at its peer bits."""
    rows = []
    keys = sorted({(r.shape, r.m, r.threads) for r in results},
                  key=lambda key: (list(SHAPES).index(key[0]) if key[0] in SHAPES else -1,
                                   key[1], key[2]))
    for shape, m, threads in keys:
        here = [r for r in results if (r.shape, r.m, r.threads) == (shape, m, threads)]
        ort_best: dict[str, Result] = {}
        for r in here:
            if r.contender.startswith("ort-") and r.bits != "32" and r.valid and r.runs:
                best = ort_best.get(r.bits)
                if best is None or r.median_ms < best.median_ms:
                    ort_best[r.bits] = r
        fp32 = next(r for r in here if r.contender == "ort-fp32")
        floor = next((r.median_ms for r in here if r.contender == "call-floor"), float("nan"))
        for ours in (r for r in here if r.contender.startswith("edgepet")):
            peer = ort_best.get(PEER_BITS[ours.bits])
            if peer is None:
                continue
            rows.append({
                "shape": shape, "m": m, "threads": threads, "bits": ours.bits,
                "kernel": ours.contender.removeprefix("edgepet-"),
                "edgepet_ms": ours.median_ms, "edgepet_err": ours.rel_err,
                "edgepet_bits_per_weight": ours.bits_per_weight,
                "ort_bits": peer.bits, "ort_ms": peer.median_ms,
                "ort_config": f"{peer.contender} {peer.config}", "ort_err": peer.rel_err,
                "ort_bits_per_weight": peer.bits_per_weight,
                "speedup_vs_ort": peer.median_ms / ours.median_ms,
                "fp32_ms": fp32.median_ms, "call_floor_ms": floor,
                "speedup_vs_fp32": fp32.median_ms / ours.median_ms,
            })
    return rows


# ----------------------------------------------------------------------------- the stack

def _stack_graph(make_node, layers: int) -> onnx.ModelProto:
    """`layers` Llama layers of projections, each reading the previous one's output
    where the widths allow (q/k/v read x; o reads q; gate/up read o; down reads gate)."""
    nodes, inits = [], []
    x = "x"
    for layer in range(layers):
        outs = {}
        for proj, k, n in LLAMA_LAYER:
            src = {"q": x, "k": x, "v": x, "o": outs.get("q"), "gate": outs.get("o"),
                   "up": outs.get("o"), "down": outs.get("gate")}[proj]
            name = f"layers.{layer}.{proj}"
            node, node_inits = make_node(name, src, name + ".out", k, n, layer)
            nodes.append(node)
            inits += node_inits
            outs[proj] = name + ".out"
        x = outs["down"]
    # k, v and up feed nothing else: ORT would drop them unless they are outputs.
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["M", 2048])]
    for layer in range(layers):
        for proj, n in (("k", 512), ("v", 512), ("up", 8192)):
            outputs.append(helper.make_tensor_value_info(f"layers.{layer}.{proj}.out",
                                                         TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(nodes, "llama_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 2048])],
                              outputs, initializer=inits)
    return graph


def edgepet_stack(bits: int, layers: int, rng, zero_level: bool = False) -> onnx.ModelProto:
    """Random symmetric codes (packing is the same work for any codes; ``zero_level``: read
    on the zero-level grid); each layer's tensors are distinct copies, so no layer is read
    from cache."""
    tensors = {}
    for _, k, n in LLAMA_LAYER:
        if (k, n) not in tensors:
            g = -(-k // EDGEPET_GROUP)
            codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
            scales = rng.uniform(0.005, 0.02, (n, g)).astype(np.float32)
            tensors[(k, n)] = QuantizedTensor(codes, scales, None, bits, EDGEPET_GROUP, True,
                                              zero_level=zero_level)

    def make_node(name, src, dst, k, n, layer):
        node, inits = lut_matmul_node(tensors[(k, n)], src, dst, name)
        _perturb(inits, layer)
        return node, inits

    return helper.make_model(_stack_graph(make_node, layers), opset_imports=EDGEPET_OPSETS)


def ort_stack(bits: int, block: int, zero_points: bool, layers: int, rng) -> onnx.ModelProto:
    weights = {}
    for _, k, n in LLAMA_LAYER:
        if (k, n) not in weights:
            w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
            weights[(k, n)] = nbits_weights(w, bits, block, zero_points)

    def make_node(name, src, dst, k, n, layer):
        node, inits = nbits_node(name, src, dst, k, n, bits, block, *weights[(k, n)])
        _perturb(inits, layer)
        return node, inits

    return helper.make_model(_stack_graph(make_node, layers), opset_imports=ORT_OPSETS)


def _perturb(inits: list[onnx.TensorProto], layer: int) -> None:
    """Make the packed codes of this layer differ from every other layer's."""
    for i, t in enumerate(inits):
        if t.data_type == TensorProto.UINT8 and t.name.endswith((".B", "weight_packed")):
            a = numpy_helper.to_array(t) ^ np.uint8(layer * 37 % 251)
            inits[i] = numpy_helper.from_array(a, t.name)


def stack_candidates(bits: int, threads_list: list[int], ort_peers: dict) -> list[tuple]:
    """ORT configurations timed on the stack at `bits`: the 4096x4096 M=1 winners at every
    thread count, and blocks 64 and 128 without zero points. The winner of an L3-resident
    product is not always the fastest when the weights stream from memory."""
    found = [ort_peers[(str(bits), t)] for t in threads_list if (str(bits), t) in ort_peers]
    found += [(64, False, "default"), (128, False, "default")]
    return list(dict.fromkeys(found))


def _stack_name(block: int, zp: bool, path: str) -> str:
    return f"ort-nbits b{block}{'/zp' if zp else ''}/{path}"


def run_stack(bits_list: list[int], threads_list: list[int], kernel: str, ort_peers: dict,
              layers: int, budget_s: float, progress, zero_level: bool = False) -> list[dict]:
    """GB/s and tokens/s of the Llama-shaped stack: edgepet and every candidate ORT
    configuration (stack_candidates), in interleaved rounds; the fastest ORT one per
    thread count is the peer (its row has "peer": True)."""
    rows = []
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    for bits in bits_list:
        progress(f"stack {bits}-bit: building models")
        ours = "edgepet-" + kernel
        models = {ours: edgepet_stack(bits, layers, rng, zero_level)}
        configs: dict[str, dict[str, str]] = {ours: {}}
        for block, zp, path in stack_candidates(bits, threads_list, ort_peers):
            name = _stack_name(block, zp, path)
            models[name] = ort_stack(bits, block, zp, layers, rng)
            configs[name] = {"mlas.use_lut_gemm": "1"} if path == "lut" else {}
        nbytes = {name: model_weight_bytes(m) for name, m in models.items()}
        data = {name: m.SerializeToString() for name, m in models.items()}
        del models  # the serialized copies are what the sessions read
        weights = sum(n * k for _, k, n in LLAMA_LAYER) * layers
        for threads in threads_list:
            timed: dict[str, list[float]] = {}
            for r in range(ROUNDS):
                for name in data:
                    progress(f"stack {bits}-bit threads={threads} round {r + 1}: {name}")
                    c = Contender(name, "", str(bits), data[name], np.zeros(0), 0.0,
                                  configs[name], kernel if name == ours else "")
                    sess = session(c, threads)
                    timed.setdefault(name, []).extend(
                        time_runs(sess, x, budget_s, at_least=5, at_most=50))
                    del sess
            medians = {name: statistics.median(t) for name, t in timed.items()}
            peer = min((n for n in medians if n != ours), key=medians.__getitem__)
            for name, s in medians.items():
                rows.append({"bits": bits, "threads": threads, "contender": name,
                             "peer": name == peer, "layers": layers,
                             "weight_bytes": nbytes[name],
                             "bits_per_weight": 8 * nbytes[name] / weights,
                             "ms_per_token": s * 1e3, "tokens_per_s": 1 / s,
                             "gb_per_s": nbytes[name] / s / 1e9})
    return rows


# ----------------------------------------------------------------------------- report

def print_tables(cpu: dict, results: list[Result], rows: list[dict], bandwidth: dict,
                 stack: list[dict], verbose: bool, zero_level: bool = False) -> None:
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; ISA: {' '.join(cpu['isa'])}; "
          f"load at start {cpu['load'][0]:.2f}; onnxruntime {ort.__version__}")
    if verbose:
        print("\nAll measurements (median ms; err: vs its own exact dequantized product; "
              "qerr: its dequantized product vs fp32)")
        print(f"{'shape':20} {'M':>3} {'thr':>3} {'contender':15} {'config':16} {'bits':>7}"
              f" {'b/w':>5} {'ms':>9} {'err':>7} {'qerr':>6} {'valid':>5}")
        for r in results:
            print(f"{r.shape:20} {r.m:>3} {r.threads:>3} {r.contender:15} {r.config:16}"
                  f" {r.bits:>7} {r.bits_per_weight:>5.2f} {r.median_ms:>9.4f}"
                  f" {r.rel_err:>7.4f} {r.quant_err:>6.3f} {'yes' if r.valid else 'NO':>5}")
    codes = "symmetric, 2-4 bits zero-level" if zero_level else "symmetric"
    print(f"\nedgepet (group 64, {codes}) vs the fastest valid ORT MatMulNBits "
          "(accuracy_level=4) at the peer bits; floor: the same call with an Identity node")
    print(f"{'shape':20} {'M':>3} {'thr':>3} {'kernel':>6} {'bits':>7} {'b/w':>5}"
          f" {'edgepet ms':>10} {'ORT ms':>9} {'ORT winner':>30} {'b/w':>5} {'speedup':>8}"
          f" {'vs fp32':>8} {'err':>7} {'floor':>7}")
    for row in rows:
        print(f"{row['shape']:20} {row['m']:>3} {row['threads']:>3} {row['kernel']:>6}"
              f" {row['bits']:>7} {row['edgepet_bits_per_weight']:>5.2f}"
              f" {row['edgepet_ms']:>10.4f} {row['ort_ms']:>9.4f}"
              f" {row['ort_bits'] + 'b ' + row['ort_config']:>30}"
              f" {row['ort_bits_per_weight']:>5.2f}"
              f" {row['speedup_vs_ort']:>7.2f}x {row['speedup_vs_fp32']:>7.2f}x"
              f" {row['edgepet_err']:>7.4f} {row['call_floor_ms']:>7.4f}")
    if bandwidth:
        print("\nRead bandwidth of this machine: "
              + ", ".join(f"{t} thread(s) {gb:.1f} GB/s" for t, gb in bandwidth.items()))
    if stack:
        print("\nMemory-bound: Llama-3.2-1B-shaped projection stack, M=1; ORT: every "
              "configuration timed, the fastest (*) is the peer")
        print(f"{'bits':>4} {'thr':>3} {'contender':28} {'MB':>7} {'b/w':>5} {'ms/token':>9}"
              f" {'tok/s':>7} {'GB/s':>6} {'of bw':>6} {'vs ORT':>7}")
        for row in stack:
            peer = next(r for r in stack if r["bits"] == row["bits"]
                        and r["threads"] == row["threads"] and r["peer"])
            frac = row["gb_per_s"] / bandwidth[row["threads"]] if bandwidth else float("nan")
            name = row["contender"] + (" *" if row["peer"] else "")
            print(f"{row['bits']:>4} {row['threads']:>3} {name:28}"
                  f" {row['weight_bytes'] / 1e6:>7.1f} {row['bits_per_weight']:>5.2f}"
                  f" {row['ms_per_token']:>9.2f} {row['tokens_per_s']:>7.1f}"
                  f" {row['gb_per_s']:>6.1f} {frac:>6.0%}"
                  f" {row['tokens_per_s'] / peer['tokens_per_s']:>6.2f}x")


def winners(rows: list[dict], shape: str, m: int) -> dict:
    """(bits, threads) -> (block, zero points, path) of ORT's winner on one row."""
    out = {}
    for row in rows:
        if row["shape"] == shape and row["m"] == m and row["ort_config"].startswith("ort-nbits"):
            cfg = row["ort_config"].split()[1].split("/")
            out[(row["ort_bits"], row["threads"])] = (int(cfg[0][1:]), "zp" in cfg, cfg[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all measurements and ratios to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--shapes", help="comma-separated names of SHAPES to run (default all)")
    parser.add_argument("--ms", default="1,32", help="comma-separated row counts M")
    parser.add_argument("--bits", default=",".join(map(str, EDGEPET_BITS)),
                        help="comma-separated edgepet widths (1-4, ternary); ORT runs the peer "
                             "widths, the stack the integer ones among 2 and 4")
    parser.add_argument("--zero-level", action="store_true",
                        help="edgepet's 2-4 bit codes on the zero-level grid (ORT's symmetric "
                             "grid; --zero-level exports) instead of odd symmetric levels")
    parser.add_argument("--no-stack", action="store_true", help="skip the memory-bound stack")
    parser.add_argument("--stack-layers", type=int, default=LLAMA_LAYERS)
    parser.add_argument("--verbose", action="store_true", help="print every measurement")
    vector = ["auto"] + ([k for k in available_kernels() if k != "reference"] or ["reference"])
    parser.add_argument("--kernels", default=",".join(vector),
                        help=f"edgepet kernels to time (default: {','.join(vector)})")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    bits_list = [b if b == "ternary" else int(b) for b in args.bits.split(",")]
    if not set(bits_list) <= set(EDGEPET_BITS):
        parser.error(f"--bits: {args.bits!r}, expected some of {EDGEPET_BITS}")
    kernel_names = args.kernels.split(",")
    unknown = set(kernel_names) - set(available_kernels()) - {"auto"}
    if unknown:
        parser.error(f"kernel(s) {sorted(unknown)} not available here: {available_kernels()}")
    if args.smoke:
        shapes, ms, budget, rounds = {"smoke 256->96": (256, 96)}, [1, 3], 0.01, 2
    else:
        names = args.shapes.split(",") if args.shapes else list(SHAPES)
        unknown_shapes = [name for name in names if name not in SHAPES]
        if unknown_shapes:
            parser.error(f"shape(s) {unknown_shapes} unknown; choose from {list(SHAPES)}")
        shapes = {name: SHAPES[name] for name in names}
        ms, budget, rounds = [int(m) for m in args.ms.split(",")], args.budget, ROUNDS

    def progress(msg: str) -> None:
        print(f"\r\033[K{msg}"[:150], end="", file=sys.stderr, flush=True)

    cpu = cpu_summary()
    results = run(shapes, ms, threads, kernel_names, budget, rounds, progress, bits_list,
                  args.zero_level)
    rows = ratios(results)
    bandwidth, stack = {}, []
    if not args.smoke and not args.no_stack:
        progress("read bandwidth")
        bandwidth = {t: read_bandwidth(t) for t in threads}
        peers = winners(rows, "4096x4096", 1)
        stack = run_stack([b for b in (2, 4) if b in bits_list], threads, kernel_names[0], peers,
                          args.stack_layers,
                          max(budget, 1.0), progress, args.zero_level)
        bandwidth = {t: max(gb, read_bandwidth(t)) for t, gb in bandwidth.items()}
    print("\r\033[K", end="", file=sys.stderr)
    print_tables(cpu, results, rows, bandwidth, stack, args.verbose or args.smoke,
                 args.zero_level)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "cpu": cpu, "zero_level": args.zero_level,
                       "load_at_end": os.getloadavg(), "results": [asdict(r) for r in results],
                       "ratios": rows, "read_bandwidth_gb_per_s": bandwidth, "stack": stack},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
