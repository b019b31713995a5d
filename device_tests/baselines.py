"""Baselines built from the bundle as their users build them.

``ort-fp32`` — the decision, and why: a bundle does not carry the model's original
float weights (carrying them would multiply its size by 4-16 for a baseline few users
run), so the harness *rebuilds* the float graph from the bundle itself. Every
``LutMatMul`` becomes ``MatMul`` (+ ``Add`` for the bias) with the weight the codes
stand for, and that weight is decoded by the op library itself: one ``LutMatMul`` run
on the identity matrix returns ``dequant(W)ᵀ`` exactly (each activation table then holds
only 0 and ±1, which int8 stores exactly), so the layout and dequantization rule stay
defined once, in native code. The float graph therefore computes what the quantized
codes stand for — its error against PyTorch is the quantization error alone — and its
speed is what float costs. ``--float-model FILE.onnx`` gives the original float graph
instead (e.g. from ``torch.onnx.export``), and then every baseline is built from the
original weights, as a user of ORT would build it.

``ort-nbits4`` / ``ort-nbits2`` — that float graph quantized by ONNX Runtime's own
``MatMulNBitsQuantizer`` (``accuracy_level=4``, block 32, symmetric: what ONNX Runtime
GenAI's model builder does).

``litert`` — a ``.tflite`` conversion of the float model, run by LiteRT's interpreter.
Conversion needs the PyTorch model (litert-torch), so it cannot happen on the device:
``edgepet export --with-tflite`` converts it on the host and the bundle carries it
(``baselines.tflite`` in the manifest, hashed like every file); ``--tflite FILE`` gives
another. Without either, the report records why the column is empty.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepet.runtime import Bundle
from edgepet.runtime.operator import DOMAIN, OP_VERSION

#: Rows of the identity fed per decoding run (bounds its memory to 256 x N floats).
_DECODE_ROWS = 256
#: Models above this many bytes are saved with ONNX external data.
_EXTERNAL_DATA_BYTES = 256 << 20

BASELINES = ("ort-fp32", "ort-nbits4", "ort-nbits2", "litert")
DEFAULT_BASELINES = BASELINES


class BaselineUnavailable(Exception):
    """A baseline that cannot be built or run here; the message says why."""


@dataclass
class Contender:
    """One thing the harness times: edgepet's bundle or a baseline model."""

    name: str
    kind: str  # "edgepet" | "ort" | "litert"
    model: str | None
    description: str
    status: str = "ok"  # "ok" | "unavailable"
    reason: str | None = None
    build_s: float | None = None
    model_bytes: int | None = None
    bits_per_weight: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in (
            "name", "kind", "model", "description", "status", "reason", "build_s",
            "model_bytes", "bits_per_weight", "details")}


# --- the float graph -----------------------------------------------------------------------


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _decode_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                   library: str) -> np.ndarray:
    """``dequant(W)ᵀ`` (float32 ``[K, N]``) of one LutMatMul, computed by the op itself."""
    import onnxruntime as ort

    from edgepet.runtime import session_options

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n = int(attrs["K"]), int(attrs["N"])
    # Inputs: A, packed W, scales, [zero points], [bias]; the bias is left out here.
    inputs = ["x", *node.input[1:4]]
    tensors = [inits[name] for name in inputs[1:] if name]
    decoder = helper.make_node(node.op_type, inputs, ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [decoder], "decode",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["M", n])],
        initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, OP_VERSION)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   session_options(library=library),
                                   providers=["CPUExecutionProvider"])
    out = np.empty((k, n), np.float32)
    for start in range(0, k, _DECODE_ROWS):
        rows = min(_DECODE_ROWS, k - start)
        eye = np.zeros((rows, k), np.float32)
        eye[np.arange(rows), start + np.arange(rows)] = 1.0
        out[start:start + rows] = session.run(None, {"x": eye})[0]
    return out


def _graph_reads(graph: onnx.GraphProto) -> set[str]:
    reads = {o.name for o in graph.output}
    for node in graph.node:
        reads.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                reads |= _graph_reads(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    reads |= _graph_reads(g)
    return reads


def float_graph(bundle: Bundle, progress=None) -> onnx.ModelProto:
    """The bundle's graph with every LutMatMul replaced by a float MatMul (+ Add)."""
    model = onnx.load(str(bundle.model_path))
    graph = model.graph
    inits = _initializers(graph)
    library = bundle.op_library()
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    lut = [node for node in graph.node if node.domain == DOMAIN]
    own = sorted({node.op_type for node in lut if node.op_type != "LutMatMul"})
    if own:
        raise BaselineUnavailable(
            f"the bundle's graph also has edgepet's own {', '.join(own)} nodes (a decoder "
            "bundle), which plain ONNX Runtime cannot run; compare decoders with "
            "`python benchmarks/llm.py speed` (llama.cpp, ORT GenAI) instead")
    for i, node in enumerate(graph.node):
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        if progress:
            progress(f"decoding {node.name} ({lut.index(node) + 1}/{len(lut)})")
        weight = f"{node.name}.weight_float_t"
        new_inits.append(numpy_helper.from_array(_decode_weight(node, inits, library), weight))
        bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
        out = node.output[0]
        product = f"{out}.before_bias" if bias else out
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product],
                                      name=f"{node.name or i}.matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out],
                                          name=f"{node.name or i}.bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    reads = _graph_reads(graph)
    kept = [t for t in graph.initializer if t.name in reads]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    init_names = {t.name for t in graph.initializer}
    stale = [i for i in graph.input if i.name not in reads and i.name not in init_names]
    for value in stale:
        graph.input.remove(value)
    opsets = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def save_model(model: onnx.ModelProto, path: Path) -> int:
    """Save ``model`` (external data when large); return its bytes on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_suffix(path.suffix + ".data")
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, location=data.name)
    else:
        onnx.save(model, str(path))
    return model_bytes(path)


def model_bytes(path: Path) -> int:
    """Bytes on disk of an ONNX model and its external data file."""
    data = path.with_suffix(path.suffix + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# --- bits per weight -----------------------------------------------------------------------


def _tensor_bytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(
        t.data_type).itemsize


def linear_bits_per_weight(model: onnx.ModelProto) -> float | None:
    """Stored bits per weight over the matrix products (MatMul, MatMulNBits, LutMatMul).

    Counts every byte a product reads for its weight (codes, scales, zero points),
    divided by its ``N·K`` weights; biases are not weights and are left out.
    """
    inits = _initializers(model.graph)
    stored = weights = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            t = inits[node.input[1]]
            if len(t.dims) == 2:
                stored += _tensor_bytes(t)
                weights += t.dims[0] * t.dims[1]
        elif node.op_type in ("MatMulNBits", "LutMatMul"):
            parts = node.input[1:4]
            stored += sum(_tensor_bytes(inits[p]) for p in parts if p in inits)
            weights += int(attrs["K"]) * int(attrs["N"])
    return 8 * stored / weights if weights else None


# --- building the contenders ---------------------------------------------------------------


def edgepet_contender(bundle: Bundle, adapter: str | None) -> Contender:
    """The bundle itself."""
    q = bundle.manifest["quantization"]
    size = sum(info["bytes"] for rel, info in bundle.manifest["files"].items()
               if rel.startswith(("model.onnx", "adapters/", "lib/")))
    layers = bundle.layers
    stored = sum(layer["stored_bytes"] for layer in layers)
    weights = sum(layer["N"] * layer["K"] for layer in layers)
    return Contender(
        name="edgepet", kind="edgepet", model=str(bundle.path),
        description=f"edgepet LutMatMul, {q['bits']}-bit, group {q['group_size']}, "
                    + ("zero-level symmetric" if q.get("zero_level") else
                       "symmetric" if q["symmetric"] else "asymmetric")
                    + (f", adapter {adapter}" if adapter else ""),
        model_bytes=size,
        bits_per_weight=8 * stored / weights if weights else None,
        details={"adapters": bundle.adapters, "target": bundle.target},
    )


def build(names: list[str], bundle: Bundle, work: Path, float_model: str | None = None,
          tflite: str | None = None, progress=None) -> list[Contender]:
    """Build the baselines ``names`` into ``work``; failures become 'unavailable'."""
    contenders: list[Contender] = []
    fp32: onnx.ModelProto | None = None
    fp32_error: str | None = None
    source = "the original float model " + float_model if float_model else (
        "the float graph rebuilt from the bundle's dequantized weights")
    for name in names:
        start = time.perf_counter()
        try:
            if name == "litert":
                contenders.append(_litert(bundle, tflite))
                continue
            if fp32 is None and fp32_error is None:
                try:
                    fp32 = _load_float(float_model) if float_model else float_graph(
                        bundle, progress)
                except BaselineUnavailable as error:
                    fp32_error = str(error)
            if fp32 is None:
                raise BaselineUnavailable(fp32_error or "no float graph")
            if name == "ort-fp32":
                path = work / "ort-fp32.onnx"
                model = fp32
                description = f"ONNX Runtime, fp32 MatMul ({source})"
            elif name in ("ort-nbits4", "ort-nbits2"):
                bits = int(name[-1])
                if progress:
                    progress(f"quantizing the float graph with MatMulNBitsQuantizer ({bits}-bit)")
                model = _matmul_nbits(fp32, bits)
                path = work / f"{name}.onnx"
                description = (f"ONNX Runtime MatMulNBits, {bits}-bit, block 32, symmetric, "
                               f"accuracy_level=4 (MatMulNBitsQuantizer on {source})")
            else:
                raise BaselineUnavailable(f"unknown baseline {name!r}; known: "
                                          f"{', '.join(BASELINES)}")
            size = save_model(model, path)
            contenders.append(Contender(
                name=name, kind="ort", model=str(path), description=description,
                build_s=time.perf_counter() - start, model_bytes=size,
                bits_per_weight=linear_bits_per_weight(model)))
        except BaselineUnavailable as error:
            contenders.append(Contender(name=name, kind="ort", model=None, description=name,
                                        status="unavailable", reason=str(error)))
    return contenders


def _load_float(path: str) -> onnx.ModelProto:
    try:
        model = onnx.load(path)
    except Exception as error:  # noqa: BLE001 — onnx raises many types for a bad file
        raise BaselineUnavailable(f"--float-model {path} cannot be read: {error}") from None
    if any(node.domain == DOMAIN for node in model.graph.node):
        raise BaselineUnavailable(f"--float-model {path} contains LutMatMul nodes; give the "
                                  "float graph (e.g. from torch.onnx.export)")
    return model


def _matmul_nbits(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as error:
        raise BaselineUnavailable(f"onnxruntime.quantization cannot be imported ({error}) — "
                                  "it needs the onnx package next to onnxruntime") from None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # The quantizer logs a line per node at INFO; progress is ours to print.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(copy, bits=bits, block_size=32, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
    except Exception as error:  # noqa: BLE001 — ORT's quantizer raises what it likes
        raise BaselineUnavailable(f"MatMulNBitsQuantizer ({bits}-bit) failed: "
                                  f"{type(error).__name__}: {error}") from None
    return quantizer.model.model


def litert_available() -> str | None:
    """None when LiteRT's interpreter can be imported, else why not."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            if importlib.util.find_spec(module) is not None:
                return None
        except ModuleNotFoundError:
            continue
    return ("LiteRT is not installed here: pip install ai-edge-litert (or tflite-runtime "
            "where only it installs)")


def _litert(bundle: Bundle, tflite: str | None) -> Contender:
    missing = litert_available()
    if missing:
        raise BaselineUnavailable(missing)
    shipped = (bundle.manifest.get("baselines") or {}).get("tflite")
    if tflite:
        path, origin = Path(tflite), "given with --tflite"
        if not path.is_file():
            raise BaselineUnavailable(f"--tflite {path} does not exist")
    elif shipped:
        # Bundle.open checked that it is listed in the file table (and its hash)
        path, origin = bundle.path / shipped["file"], (
            f"converted at export by {shipped['converter']}")
    else:
        raise BaselineUnavailable(
            "no .tflite model: the bundle was exported without --with-tflite and no "
            "--tflite FILE was given. LiteRT needs the float model converted from PyTorch "
            "with litert-torch, which needs torch and the original model, so the device "
            "cannot make it — export again with --with-tflite (docs/bench.md, 'LiteRT'), "
            "or pass --tflite FILE")
    return Contender(name="litert", kind="litert", model=str(path),
                     description=f"LiteRT interpreter (XNNPACK CPU delegate) on {path.name}, "
                                 f"the float model {origin} (its own weights, not the "
                                 "bundle's)",
                     model_bytes=path.stat().st_size, bits_per_weight=None,
                     details={"tflite": origin})


__all__ = ["BASELINES", "BaselineUnavailable", "Contender", "build", "edgepet_contender",
           "float_graph", "linear_bits_per_weight", "litert_available"]
