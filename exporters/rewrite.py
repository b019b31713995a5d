"""Rewrite float linear layers of an ONNX graph into ``ai.edgepet.LutMatMul``.

Every ``MatMul`` whose right operand is a constant 2-D weight, and every ``Gemm`` with a
constant ``B`` (``alpha = 1``, no transposed ``A``), becomes one ``LutMatMul`` node; a
constant bias added right after it (``Gemm``'s ``C`` or a following ``Add``) is fused
into the node. Weights are quantized here with :func:`edgepet.quant.quantize` unless the
caller already holds their :class:`~edgepet.quant.QuantizedTensor` (frozen 1-bit
adapters), and are packed once, in the kernel layout, by
:func:`edgepet.exporters.onnx.lut_matmul_node` — nothing is repacked at load time.

Layers are named after the PyTorch parameter whose values they hold (exporters rename
or constant-fold weights, so the match is by value), so ``--keep`` patterns and the
manifest speak the user's names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepet.quant import QuantizedTensor, quantize
from edgepet.quant.select import glob_matches
from edgepet.quant.tensor import Bits
from edgepet.runtime.operator import DOMAIN, OP_VERSION


def digest(array: np.ndarray) -> str:
    """Identity of a float matrix by value: shape and float32 bytes."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    h = hashlib.sha1(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class QuantPolicy:
    """How base weights are quantized: bits, group size, symmetry (and for symmetric codes,
    whether they have a zero level), layers kept in float."""

    bits: Bits = 4
    group_size: int | None = 64
    symmetric: bool = True
    keep: tuple[str, ...] = ()
    zero_level: bool = False

    def codes_kwargs(self) -> dict[str, bool]:
        """Keyword arguments a quantizer takes beyond ``(w, bits, group_size, symmetric)``:
        ``zero_level`` only where set, so a quantizer of the older signature still serves
        every other policy."""
        return {"zero_level": True} if self.zero_level else {}

    def keeps(self, name: str) -> bool:
        """True when ``name`` matches a ``--keep`` glob (e.g. ``lm_head``)."""
        return glob_matches(name, self.keep)


@dataclass(frozen=True)
class KnownWeight:
    """A weight whose codes are fixed already (a frozen low-bit adapter matrix)."""

    name: str
    qt: QuantizedTensor
    #: Its packed tensors become graph inputs that adapter files override.
    switchable: bool = False


@dataclass
class LayerRecord:
    """One rewritten (or kept) linear layer, as the manifest lists it."""

    name: str
    node: str
    n: int
    k: int
    bits: Bits | None  # None: kept in float
    group_size: int | None
    symmetric: bool | None
    bias: bool
    float_bytes: int
    stored_bytes: int
    switchable: bool = False
    parameters: list[str] = field(default_factory=list)
    zero_level: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (``zero_level`` only where set: op ABI 6's codes)."""
        return {
            "name": self.name, "node": self.node, "N": self.n, "K": self.k,
            "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
            "bias": self.bias, "float_bytes": self.float_bytes,
            "stored_bytes": self.stored_bytes, "switchable": self.switchable,
            **({"zero_level": True} if self.zero_level else {}),
        }


@dataclass
class RewriteResult:
    """The rewritten model, its layers, and each LutMatMul's weight for twins and adapters."""

    model: onnx.ModelProto
    layers: list[LayerRecord]
    quantized: dict[str, tuple[QuantizedTensor, np.ndarray | None]]


@dataclass
class _Site:
    index: int
    input_name: str
    output_name: str
    weight: np.ndarray  # [N, K]
    bias: np.ndarray | None
    absorbed: list[int]  # indexes of nodes folded into the LutMatMul (a bias Add)
    fallback_name: str


class _Graph:
    """Index of a graph: constants, producers and consumers by value name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        inputs = {i.name for i in graph.input}
        self.initializers = {t.name: t for t in graph.initializer if t.name not in inputs}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                self.producer[out] = i
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.outputs = {o.name for o in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant (initializer, Constant, Transpose)."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        index = self.producer.get(name)
        if index is None:
            return None
        node = self.graph.node[index]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
            return None
        if node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
            source = self.constant(node.input[0])
            if source is None or source.ndim != 2:
                return None
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            return source.transpose(perm) if perm == [1, 0] else None
        return None


def _attr(node: onnx.NodeProto, name: str, default: float) -> float | int:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _float_matrix(value: np.ndarray | None) -> bool:
    return value is not None and value.ndim == 2 and value.dtype in (np.float32, np.float64,
                                                                     np.float16)


def _bias_vector(value: np.ndarray | None, n: int) -> np.ndarray | None:
    if value is None or value.dtype.kind != "f" or value.ndim != 1 or value.shape[0] != n:
        return None
    return value.astype(np.float32)


def _find_sites(g: _Graph) -> list[_Site]:
    sites = []
    for i, node in enumerate(g.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        site = _matmul_site(g, i, node) if node.op_type == "MatMul" else _gemm_site(g, i, node)
        if site is not None:
            sites.append(site)
    return sites


def _matmul_site(g: _Graph, i: int, node: onnx.NodeProto) -> _Site | None:
    w = g.constant(node.input[1])
    if not _float_matrix(w) or g.constant(node.input[0]) is not None:
        return None
    weight = np.ascontiguousarray(w.T, dtype=np.float32)  # MatMul holds [K, N]
    out = node.output[0]
    bias, absorbed = None, []
    users = g.consumers.get(out, [])
    if out not in g.outputs and len(users) == 1:
        add = g.graph.node[users[0]]
        if add.op_type == "Add" and add.domain in ("", "ai.onnx"):
            other = add.input[1] if add.input[0] == out else add.input[0]
            bias = _bias_vector(g.constant(other), weight.shape[0])
            if bias is not None:
                absorbed, out = [users[0]], add.output[0]
    return _Site(i, node.input[0], out, weight, bias, absorbed, node.input[1])


def _gemm_site(g: _Graph, i: int, node: onnx.NodeProto) -> _Site | None:
    if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "transA", 0):
        return None
    w = g.constant(node.input[1])
    if not _float_matrix(w):
        return None
    weight = w if _attr(node, "transB", 0) else w.T
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = g.constant(node.input[2])
        if c is not None and c.ndim == 2 and c.shape[0] == 1:
            c = c[0]
        bias = _bias_vector(c, weight.shape[0])
        if bias is None or _attr(node, "beta", 1.0) != 1.0:
            return None
    return _Site(i, node.input[0], node.output[0], weight, bias, [], node.input[1])


def _next_name(candidates: str | list[str] | None, used: set[str], fallback: str) -> str:
    """The first candidate not given out yet (the last one again when all are)."""
    if candidates is None:
        return fallback
    if isinstance(candidates, str):
        return candidates
    name = next((c for c in candidates if c not in used), candidates[-1])
    used.add(name)
    return name


_INIT_SUFFIXES = (".weight_packed", ".scales", ".zero_points", ".bias")


def _unique(name: str, taken: set[str], values: set[str]) -> str:
    """A node name not used yet whose initializer names clash with no value of the graph."""
    candidate, n = name, 2
    while candidate in taken or any(candidate + s in values for s in _INIT_SUFFIXES):
        candidate, n = f"{name}#{n}", n + 1
    taken.add(candidate)
    return candidate


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    return names | {o for node in graph.node for o in node.output}


def rewrite_linears(
    model: onnx.ModelProto,
    policy: QuantPolicy,
    names: Mapping[str, str | list[str]] | None = None,
    known: Mapping[str, KnownWeight] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    quantize_fn: Callable[..., QuantizedTensor] = quantize,
) -> RewriteResult:
    """Replace constant-weight MatMul/Gemm nodes of ``model`` with LutMatMul nodes.

    Args:
        model: an ONNX model from the torch exporter (not modified).
        policy: bits, group size, symmetry and layers to keep in float.
        names: ``digest(weight [N, K]) -> layer name`` (from the PyTorch parameters), or a
            list of names when several parameters hold equal values (copied layers): they
            are given out in order.
        known: ``digest(dequantized weight) -> KnownWeight``: matrices that already have
            codes (frozen 1-bit adapters); they keep those codes exactly.
        progress: called as ``progress(done, total, layer)`` per layer.
        quantize_fn: the quantizer, ``(w, bits, group_size, symmetric) -> QuantizedTensor``,
            taking ``zero_level=True`` too where the policy asks for it.
    """
    from edgepet.exporters.onnx import lut_matmul_node  # needs the native packer

    names = names or {}
    known = known or {}
    used: set[str] = set()
    model = _copy(model)
    g = _Graph(model.graph)
    sites = _find_sites(g)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    layers: list[LayerRecord] = []
    quantized: dict[str, tuple[QuantizedTensor, np.ndarray | None]] = {}
    taken = {n.name for n in model.graph.node if n.name}
    values = _value_names(model.graph)
    for done, site in enumerate(sites):
        key = digest(site.weight)
        fixed = known.get(key)
        layer = fixed.name if fixed else _next_name(names.get(key), used, site.fallback_name)
        layer = layer.removesuffix(".weight")
        n, k = site.weight.shape
        float_bytes = site.weight.size * 4 + (0 if site.bias is None else site.bias.size * 4)
        if fixed is None and policy.keeps(layer):
            layers.append(LayerRecord(layer, model.graph.node[site.index].name, n, k, None,
                                      None, None, site.bias is not None, float_bytes,
                                      float_bytes))
            continue
        qt = fixed.qt if fixed else quantize_fn(site.weight, policy.bits, policy.group_size,
                                                policy.symmetric, **policy.codes_kwargs())
        node_name = _unique(layer, taken, values)
        node, inits = lut_matmul_node(qt, site.input_name, site.output_name, node_name,
                                      site.bias)
        replaced[site.index] = [node]
        dropped.update(site.absorbed)
        new_inits.extend(inits)
        stored = sum(int(numpy_helper.to_array(t).nbytes) for t in inits)
        layers.append(LayerRecord(
            layer, node_name, n, k, qt.bits, qt.group_size, qt.symmetric,
            site.bias is not None, float_bytes, stored,
            switchable=bool(fixed and fixed.switchable),
            parameters=[t.name for t in inits if t.name.endswith(
                (".weight_packed", ".scales", ".zero_points"))],
            zero_level=qt.zero_level,
        ))
        quantized[node_name] = (qt, site.bias)
        if progress:
            progress(done + 1, len(sites), layer)
    nodes = []
    for i, node in enumerate(model.graph.node):
        if i in dropped:
            continue
        nodes.extend(replaced.get(i, [node]))
    _set_nodes(model.graph, nodes)
    model.graph.initializer.extend(new_inits)
    prune(model.graph)
    if quantized and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return RewriteResult(model, layers, quantized)


def make_overridable(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """List initializers ``names`` as graph inputs too, so run-time values override them.

    ONNX Runtime's adapter files (``onnxruntime.AdapterFormat``) supply such inputs per
    run; without an active adapter the initializer is the default.
    """
    inits = {t.name: t for t in model.graph.initializer}
    present = {i.name for i in model.graph.input}
    for name in names:
        if name in present:
            continue
        t = inits[name]
        model.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))


def dequantized_twin(
    model: onnx.ModelProto, quantized: Mapping[str, tuple[QuantizedTensor, np.ndarray | None]]
) -> onnx.ModelProto:
    """The same graph with every LutMatMul replaced by MatMul with its dequantized weight.

    It runs in plain ONNX Runtime and computes exactly what the codes stand for, so the
    bundle's error splits into quantization error (twin vs PyTorch) and kernel error
    (bundle vs twin).
    """
    model = _copy(model)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for node in model.graph.node:
        if node.domain != DOMAIN or node.name not in quantized:
            nodes.append(node)
            continue
        qt, bias = quantized[node.name]
        w_name = f"{node.name}.weight_dequantized_t"
        inits.append(numpy_helper.from_array(
            np.ascontiguousarray(qt.dequantize().T), w_name))
        out = node.output[0]
        product = out if bias is None else f"{out}.before_bias"
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product],
                                      name=f"{node.name}.matmul"))
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, f"{node.name}.bias_twin"))
            nodes.append(helper.make_node("Add", [product, f"{node.name}.bias_twin"], [out],
                                          name=f"{node.name}.add"))
    _set_nodes(model.graph, nodes)
    model.graph.initializer.extend(inits)
    inputs = [i for i in model.graph.input if i.name not in {
        t.name for t in model.graph.initializer}]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    prune(model.graph)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers (and value infos) nobody
    reads, in place."""
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        used |= _subgraph_reads(graph)
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        _set_nodes(graph, keep)
    graph_inputs = {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    value_names = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in value_names]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    reads: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                reads |= {name for n in sub.node for name in n.input}
                reads |= _subgraph_reads(sub)
    return reads


__all__ = [
    "EmbeddingRecord",
    "KnownWeight",
    "LayerOption",
    "plan_layers",
    "quantize_embeddings",
    "LayerRecord",
    "QuantPolicy",
    "RewriteResult",
    "dequantized_twin",
    "digest",
    "make_overridable",
    "prune",
    "rewrite_linears",
]


# --- embedding tables ----------------------------------------------------------------------

#: ONNX Runtime's contrib op that gathers rows of a block-quantized table (CPU kernel in
#: onnxruntime >= 1.20; 4- and 8-bit codes with a zero point per block).
GATHER_Q_DOMAIN = "com.microsoft"
GATHER_Q_OP = "GatherBlockQuantized"


@dataclass
class EmbeddingRecord:
    """One embedding table stored as block-quantized codes."""

    name: str
    rows: int
    dim: int
    bits: int
    block_size: int
    float_bytes: int
    stored_bytes: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def quantize_embeddings(model: onnx.ModelProto, bits: int = 4, block_size: int = 32,
                        min_elements: int = 1 << 16, keep: tuple[str, ...] = ()
                        ) -> list[EmbeddingRecord]:
    """Turn each ``Gather`` (axis 0) over a constant float table ``[V, D]`` of at least
    ``min_elements`` values into ``com.microsoft.GatherBlockQuantized`` with ``bits``-wide
    asymmetric codes (a scale and zero point per ``block_size`` values of a row), in place.

    A table that any other node also reads (e.g. a tied output head) stays float, as do
    tables matching ``keep`` or whose width ``block_size`` does not divide.
    """
    if bits not in (4, 8):
        raise ValueError(f"embedding bits must be 4 or 8, not {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"embedding block size must be a power of two >= 16, not {block_size}")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    records: list[EmbeddingRecord] = []
    replaced: dict[str, list[onnx.TensorProto]] = {}
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table = node.input[0]
        if table not in inits or readers.get(table) != 1 or table in outputs:
            continue
        if int(_attr(node, "axis", 0)) != 0 or glob_matches(table.removesuffix(".weight"),
                                                             keep):
            continue
        w = numpy_helper.to_array(inits[table])
        if w.ndim != 2 or w.dtype != np.float32 or w.size < min_elements \
                or w.shape[1] % block_size:
            continue
        codes, scales, zeros = _block_quantize(w, bits, block_size)
        stem = table.removesuffix(".weight")
        tensors = [numpy_helper.from_array(codes, f"{stem}.codes"),
                   numpy_helper.from_array(scales, f"{stem}.scales"),
                   numpy_helper.from_array(zeros, f"{stem}.zero_points")]
        replaced[table] = tensors
        indices = node.input[1]
        node.op_type, node.domain = GATHER_Q_OP, GATHER_Q_DOMAIN
        del node.input[:]
        node.input.extend([tensors[0].name, indices, tensors[1].name, tensors[2].name])
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("gather_axis", 0),
                               helper.make_attribute("quantize_axis", 1),
                               helper.make_attribute("block_size", block_size),
                               helper.make_attribute("bits", bits)])
        records.append(EmbeddingRecord(stem, int(w.shape[0]), int(w.shape[1]), bits,
                                       block_size, int(w.nbytes),
                                       sum(int(numpy_helper.to_array(t).nbytes)
                                           for t in tensors)))
    if replaced:
        kept = [t for t in graph.initializer if t.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for tensors in replaced.values():
            graph.initializer.extend(tensors)
        if not any(o.domain == GATHER_Q_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(GATHER_Q_DOMAIN, 1))
    return records


def _block_quantize(w: np.ndarray, bits: int, block: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest codes per block of a row: (codes, scales, zero points)
    in GatherBlockQuantized's storage (4-bit: two codes per byte, low nibble first)."""
    rows, dim = w.shape
    levels = (1 << bits) - 1
    blocks = w.reshape(rows, dim // block, block).astype(np.float64)
    low = np.minimum(blocks.min(-1, keepdims=True), 0.0)
    high = np.maximum(blocks.max(-1, keepdims=True), 0.0)
    scale = (high - low) / levels
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-low / scale), 0, levels)
    codes = np.clip(np.round(blocks / scale + zero), 0, levels).astype(np.uint8)
    codes = codes.reshape(rows, dim)
    zero = zero.reshape(rows, dim // block).astype(np.uint8)
    if bits == 4:
        codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        if zero.shape[1] % 2:
            zero = np.concatenate([zero, np.zeros((rows, 1), np.uint8)], axis=1)
        zero = (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8)
    return (np.ascontiguousarray(codes), scale.reshape(rows, dim // block).astype(np.float32),
            np.ascontiguousarray(zero))


# --- mixed precision: a plan from per-layer sensitivity ----------------------------------------


@dataclass(frozen=True)
class LayerOption:
    """One way to store a layer: ``bits`` None keeps it in float."""

    bits: Bits | None
    group_size: int | None
    symmetric: bool
    zero_level: bool = False

    def label(self) -> str:
        if self.bits is None:
            return "float"
        group = self.group_size or "row"
        codes = "zero-level" if self.zero_level else "sym" if self.symmetric else "asym"
        return f"{self.bits}-bit g{group} {codes}"

    def stored_bytes(self, n: int, k: int) -> int:
        """Bytes of the packed codes, fp16 scales (and zero points) of an ``[n, k]`` layer."""
        if self.bits is None:
            return 4 * n * k
        bits = 2 if self.bits == "ternary" else int(self.bits)
        groups = -(-k // (self.group_size or k))
        return n * k * bits // 8 + n * groups * 2 * (1 if self.symmetric else 2)


def plan_layers(shapes: Mapping[str, tuple[int, int]],
                errors: Mapping[str, Mapping[LayerOption, float]],
                options: list[LayerOption], budget_error: float | None = None,
                max_bytes: int | None = None) -> dict[str, LayerOption]:
    """Choose an option per layer from its measured sensitivity.

    ``errors[layer][option]`` is the output error added by storing that layer alone that
    way (0 for float); errors of several layers are taken to add up. ``options`` run from
    the smallest to the most accurate. With ``budget_error``: start with every layer at the
    smallest option and upgrade, best error saved per byte first, until the estimate fits.
    With ``max_bytes`` (the layers' stored bytes): start at the most accurate quantized
    option and downgrade, least error added per byte saved first, until they fit. Both
    given: the size bound, then upgrades while the bytes allow.
    """
    if budget_error is None and max_bytes is None:
        raise ValueError("a plan needs budget_error or max_bytes")

    def cost(layer: str, option: LayerOption) -> int:
        return option.stored_bytes(*shapes[layer])

    quantized = [o for o in options if o.bits is not None]
    if max_bytes is not None:
        choice = {layer: len(quantized) - 1 for layer in shapes}
        total = sum(cost(layer, quantized[i]) for layer, i in choice.items())
        while total > max_bytes:
            best = None
            for layer, i in choice.items():
                if i == 0:
                    continue
                saved = cost(layer, quantized[i]) - cost(layer, quantized[i - 1])
                added = errors[layer][quantized[i - 1]] - errors[layer][quantized[i]]
                score = max(added, 0.0) / max(saved, 1)
                if saved > 0 and (best is None or score < best[0]):
                    best = (score, layer)
            if best is None:
                raise ValueError(f"no plan fits {max_bytes} bytes: the smallest option "
                                 f"({quantized[0].label()}) needs {total}")
            choice[best[1]] -= 1
            total = sum(cost(layer, quantized[i]) for layer, i in choice.items())
        ladder = quantized
    else:
        choice = {layer: 0 for layer in shapes}
        ladder = options
    if budget_error is not None:
        def estimate() -> float:
            return sum(errors[layer][ladder[i]] for layer, i in choice.items())

        while estimate() > budget_error:
            total = sum(cost(layer, ladder[i]) for layer, i in choice.items())
            best = None
            for layer, i in choice.items():
                if i + 1 >= len(ladder):
                    continue
                extra = cost(layer, ladder[i + 1]) - cost(layer, ladder[i])
                if max_bytes is not None and total + extra > max_bytes:
                    continue
                gain = errors[layer][ladder[i]] - errors[layer][ladder[i + 1]]
                score = gain / max(extra, 1)
                if gain > 0 and (best is None or score > best[0]):
                    best = (score, layer)
            if best is None:
                break
            choice[best[1]] += 1
    return {layer: ladder[i] for layer, i in choice.items()}
