"""The decoder graph: a Llama-family model with a KV cache, written with ``onnx.helper``.

One graph serves prefill and decode. Inputs:

* ``input_ids`` int64 ``[batch, seq]`` — the new tokens;
* ``past.{i}.key`` / ``past.{i}.value`` float16 (or float) ``[batch, kv_heads, capacity,
  head_dim]`` — the cache buffers;
* ``past_length`` int64 ``[1]`` — how many positions of the buffers are filled (0 for a
  fresh prompt);
* ``num_logits`` int64 ``[1]`` — logits for the last N positions (0: every position;
  generation asks for 1, perplexity for all).

Outputs: ``logits`` ``[batch, n, vocab]`` and ``present.{i}.key`` / ``.value``: the
buffers again, with the new positions written at ``past_length ..`` (capacity must hold
them). A caller binds each ``present`` output to its ``past`` input's buffer (ONNX
Runtime I/O binding), so nothing is copied: the cache stays in place and grows by the new
tokens (ONNX Runtime GenAI's "past-present share buffer"). Positions start at
``past_length``; attention is causal over the cache and the new tokens.

The standard-op graph (``fused=False``, below) keeps the appending cache of bundles before
op ABI 5 instead: no ``past_length``, the past ``[batch, kv_heads, past, head_dim]``
holds exactly the filled positions, and present has ``past + seq`` of them.

By default edgepet's fused ops carry attention and the MLP activation:
``ai.edgepet.GroupQueryRotaryAttention`` (split of the fused ``qkv``, rotate-half RoPE, the
cache append and causal grouped-query attention in one node) and ``ai.edgepet.SwiGLU``
(``silu(gate) * up``); docs/llm.md describes both. With ``fused=False`` standard ONNX
(opset 23) carries attention instead — ``Split``, ``RotaryEmbedding``, ``Attention`` with a
causal mask and position ids built once per call — and ``Split`` + contrib ``QuickGelu`` +
``Mul`` the activation: the graph of bundles before op ABI 4, kept for comparison.
ONNX Runtime's contrib ops carry the norms: each residual add fused with the RMS norm after
it (``SkipSimplifiedLayerNormalization``). Every projection is one ``LutMatMul`` or, when
kept, a float ``MatMul``; projections that read the same input are fused (q/k/v into
``qkv``, gate/up into ``gate_up``) — rows are quantized per row and group, so fusing
changes no value and saves a call per layer.

The tied output head of a model whose embeddings and head share one matrix can read the
embedding table's 4-bit codes itself (``head="shared"``): ONNX Runtime's contrib
``MatMulNBits`` (block 32, ``accuracy_level=4``) takes ``GatherBlockQuantized``'s codes
``[V, D/2]`` (viewed as ``[V, D/32, 16]`` through a ``Reshape``), scales ``[V, D/32]`` and
packed zero points ``[V, D/64]`` byte for byte, so the bundle stores the matrix once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepet.exporters.llm.checkpoint import Checkpoint, LlamaConfig
from edgepet.exporters.onnx import DOMAIN, OP_VERSION, lut_matmul_node
from edgepet.exporters.rewrite import prune
from edgepet.quant.tensor import Bits, QuantizedTensor

#: Standard-domain opset: RMSNormalization, RotaryEmbedding and Attention (the standard-op
#: graph) are opset 23.
OPSET = 23
#: ONNX Runtime's contrib domain: each residual add fused with the RMS norm after it
#: (SkipSimplifiedLayerNormalization); in the standard-op graph SiLU as QuickGelu(alpha=1).
#: Its GroupQueryAttention (RoPE inside) was measured and is slower here: see docs/llm.md.
CONTRIB = "com.microsoft"
IR_VERSION = 10
#: The fused graph's input: filled positions of the cache buffers.
PAST_LENGTH = "past_length"


def past_names(i: int) -> tuple[str, str]:
    """Input names of layer ``i``'s cache."""
    return f"past.{i}.key", f"past.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    """Output names of layer ``i``'s updated cache."""
    return f"present.{i}.key", f"present.{i}.value"


def prefill_feeds(config: LlamaConfig, ids: Sequence[int], num_logits: int = 0,
                  capacity: int | None = None, fused: bool = True,
                  kv_dtype: type = np.float16) -> dict[str, np.ndarray]:
    """Inputs of one forward of ``ids`` from an empty cache (``num_logits`` 0: every
    position's logits) for a graph of :func:`build_decoder` with ``fused`` and
    ``kv_dtype``: cache buffers of ``capacity`` positions (None: ``len(ids)``; more leaves
    room to decode after) with ``past_length`` 0, or empty float appending caches for the
    standard-op graph."""
    size = (len(ids) if capacity is None else capacity) if fused else 0
    if size < (len(ids) if fused else 0):
        raise ValueError(f"capacity {capacity} cannot hold the {len(ids)} tokens")
    empty = np.zeros((1, config.num_kv_heads, size, config.head_dim),
                     kv_dtype if fused else np.float32)
    feeds = {"input_ids": np.array([list(ids)], np.int64),
             "num_logits": np.array([num_logits], np.int64)}
    if fused:
        feeds[PAST_LENGTH] = np.zeros(1, np.int64)
    feeds.update({name: empty for i in range(config.num_layers) for name in past_names(i)})
    return feeds


def step_feeds(config: LlamaConfig, ids: Sequence[int], past: Sequence[np.ndarray],
               past_length: int, num_logits: int = 1, fused: bool = True
               ) -> dict[str, np.ndarray]:
    """Inputs of one forward of ``ids`` after a cache: ``past`` are the previous call's
    present outputs (in input order), ``past_length`` the positions they hold (the fused
    graph's buffers may hold more; the standard-op graph's hold exactly that many)."""
    feeds = {"input_ids": np.array([list(ids)], np.int64),
             "num_logits": np.array([num_logits], np.int64)}
    if fused:
        feeds[PAST_LENGTH] = np.array([past_length], np.int64)
    names = [name for i in range(config.num_layers) for name in past_names(i)]
    feeds.update(zip(names, past, strict=True))
    return feeds


@dataclass(frozen=True)
class Projection:
    """One (possibly fused) projection: its name and the checkpoint weights it joins."""

    name: str
    parts: tuple[str, ...]

    def weight(self, ck: Checkpoint) -> np.ndarray:
        """The fused float weight ``[N, K]`` (rows of the parts, in order)."""
        mats = [ck.weights[p] for p in self.parts]
        return mats[0] if len(mats) == 1 else np.ascontiguousarray(np.concatenate(mats, 0))

    def matches(self, pattern: str) -> bool:
        """True when ``pattern`` (fnmatch) names this projection or one of its parts."""
        names = [self.name, *(p.removesuffix(".weight") for p in self.parts)]
        return any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")
                   for n in names)


def projections(config: LlamaConfig) -> list[Projection]:
    """Every projection of the model, fused, in graph order (the head last)."""
    out = []
    for i in range(config.num_layers):
        p = f"model.layers.{i}"
        out += [
            Projection(f"layers.{i}.attn.qkv", tuple(
                f"{p}.self_attn.{x}_proj.weight" for x in "qkv")),
            Projection(f"layers.{i}.attn.o", (f"{p}.self_attn.o_proj.weight",)),
            Projection(f"layers.{i}.mlp.gate_up", (f"{p}.mlp.gate_proj.weight",
                                                    f"{p}.mlp.up_proj.weight")),
            Projection(f"layers.{i}.mlp.down", (f"{p}.mlp.down_proj.weight",)),
        ]
    head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    out.append(Projection("lm_head", (head,)))
    return out


#: A projection as the graph receives it: codes, or a float ``[N, K]`` matrix (kept).
Weight = QuantizedTensor | np.ndarray


def rope_tables(config: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``[length, head_dim / 2]`` for rotate-half RoPE."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1,
           domain: str = "", **attrs) -> list[str]:
        outs = [f"{name}" if outputs == 1 else f"{name}.{j}" for j in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain,
                                           **attrs))
        return outs

    def linear(self, x: str, w: Weight, name: str) -> str:
        out = f"{name}.out"
        node, inits = projection_node(w, x, out, name)
        self.nodes.append(node)
        self.inits += inits
        return out


def projection_node(w: Weight, x: str, out: str, name: str
                    ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The node of one projection (``LutMatMul`` for codes, ``MatMul`` for a float matrix)
    and the initializers it reads — the tensors an adapter file overrides to switch it."""
    if isinstance(w, QuantizedTensor):
        return lut_matmul_node(w, x, out, name)
    wt = numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32),
                                 f"{name}.weight_t")
    return helper.make_node("MatMul", [x, wt.name], [out], name=name), [wt]


def projection_tensors(w: Weight, name: str) -> dict[str, np.ndarray]:
    """Initializer name -> value of projection ``name`` holding ``w`` (see
    :func:`projection_node`)."""
    _, inits = projection_node(w, "x", "y", name)
    return {t.name: numpy_helper.to_array(t) for t in inits}


#: Head storage choices for models whose head is tied to the embedding table.
HEAD_CHOICES = ("shared", "separate")
#: The embedding table's initializer stem; its codes are ``{stem}.codes``, ``.scales``,
#: ``.zero_points`` once ``exporters.rewrite.quantize_embeddings`` has made them.
TABLE = "embed_tokens.table"
#: Code width and block size of the table a shared head reads (MatMulNBits' layout).
SHARED_HEAD_BITS, SHARED_HEAD_BLOCK = 4, 32


def shared_head_tensors() -> tuple[str, str, str]:
    """Names of the table's codes, scales and zero points that a shared head reads."""
    return f"{TABLE}.codes", f"{TABLE}.scales", f"{TABLE}.zero_points"


def dequantize_table(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray,
                     block: int = SHARED_HEAD_BLOCK) -> np.ndarray:
    """The float ``[V, D]`` rows that 4-bit GatherBlockQuantized codes stand for."""
    def nibbles(a: np.ndarray) -> np.ndarray:
        out = np.empty((a.shape[0], a.shape[1] * 2), np.uint8)
        out[:, 0::2], out[:, 1::2] = a & 0x0F, a >> 4
        return out

    q = nibbles(codes).astype(np.float32)
    rows, dim = q.shape
    z = nibbles(zero_points)[:, :dim // block].astype(np.float32)
    return ((q.reshape(rows, dim // block, block) - z[..., None]) * scales[..., None]
            ).reshape(rows, dim)


def float_shared_head(model: onnx.ModelProto, table: np.ndarray) -> None:
    """Replace a shared head (``MatMulNBits``) by a float ``MatMul`` of ``table`` (the
    dequantized rows), in place: the dequantized twin computes what the codes stand for,
    without the int8 activations of ``accuracy_level=4``."""
    graph = model.graph
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        if node.name == "lm_head" and node.op_type == "MatMulNBits":
            wt = numpy_helper.from_array(np.ascontiguousarray(table.T), "lm_head.weight_t")
            nodes[i] = helper.make_node("MatMul", [node.input[0], wt.name], list(node.output),
                                        name="lm_head")
            graph.initializer.append(wt)
    del graph.node[:]
    graph.node.extend(nodes)
    prune(graph)  # the codes' Reshape and the table's codes, scales and zero points


Rope = tuple[str, str]


def _fused_attention(b: _Builder, c: LlamaConfig, i: int, qkv: str, rope: Rope) -> str:
    """Layer ``i``'s attention as one ``GroupQueryRotaryAttention``: split, RoPE at the
    positions after the cache, the cache write (in the shared buffer, at ``past_length``)
    and causal attention."""
    out = f"layers.{i}.attn.out"
    b.nodes.append(helper.make_node(
        "GroupQueryRotaryAttention", [qkv, *past_names(i), *rope, PAST_LENGTH],
        [out, *present_names(i)],
        name=f"layers.{i}.attn", domain=DOMAIN, num_heads=c.num_heads,
        kv_num_heads=c.num_kv_heads, scale=float(1.0 / np.sqrt(c.head_dim))))
    return out


def _standard_attention(b: _Builder, c: LlamaConfig, rope: Rope
                        ) -> Callable[[_Builder, LlamaConfig, int, str, Rope], str]:
    """Standard ONNX attention (opset 23 ``RotaryEmbedding`` and ``Attention``): builds the
    positions and the causal mask once, and returns the per-layer builder."""
    # Positions: past .. past + seq - 1; mask: key position <= query position.
    ids = "input_ids"
    (past_len,) = b.op("Shape", [past_names(0)[0]], "past_len", start=2, end=3)
    (seq_len,) = b.op("Shape", [ids], "seq_len", start=1, end=2)
    (total,) = b.op("Add", [past_len, seq_len], "total_len")
    (start_s,) = b.op("Squeeze", [past_len], "past_len_scalar")
    (total_s,) = b.op("Squeeze", [total], "total_len_scalar")
    zero, one = b.const("zero", np.array(0, np.int64)), b.const("one", np.array(1, np.int64))
    (qpos,) = b.op("Range", [start_s, total_s, one], "query_positions")
    (kpos,) = b.op("Range", [zero, total_s, one], "key_positions")
    axis0 = b.const("axis0", np.array([0], np.int64))
    (qcol,) = b.op("Unsqueeze", [qpos, "axis1"], "query_positions_col")
    (krow,) = b.op("Unsqueeze", [kpos, axis0], "key_positions_row")
    (mask,) = b.op("LessOrEqual", [krow, qcol], "causal_mask")
    (pos_row,) = b.op("Unsqueeze", [qpos, axis0], "position_row")
    (ids_shape,) = b.op("Shape", [ids], "ids_shape")
    (position_ids,) = b.op("Expand", [pos_row, ids_shape], "position_ids")
    q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    split = b.const("split.qkv", np.array([q_size, kv_size, kv_size], np.int64))

    def layer(b: _Builder, c: LlamaConfig, i: int, qkv: str, rope: Rope) -> str:
        p = f"layers.{i}"
        q, k, v = b.op("Split", [qkv, split], f"{p}.attn.split", outputs=3, axis=-1)
        (q,) = b.op("RotaryEmbedding", [q, *rope, position_ids], f"{p}.attn.rope_q",
                    num_heads=c.num_heads, interleaved=0)
        (k,) = b.op("RotaryEmbedding", [k, *rope, position_ids], f"{p}.attn.rope_k",
                    num_heads=c.num_kv_heads, interleaved=0)
        att = f"{p}.attn.out"
        b.nodes.append(helper.make_node(
            "Attention", [q, k, v, mask, *past_names(i)], [att, *present_names(i)],
            name=f"{p}.attn", q_num_heads=c.num_heads, kv_num_heads=c.num_kv_heads,
            scale=float(1.0 / np.sqrt(c.head_dim))))
        return att

    return layer


def _fused_swiglu(b: _Builder, c: LlamaConfig, p: str, gate_up: str) -> str:
    """silu(gate) * up as one ``SwiGLU``."""
    (act,) = b.op("SwiGLU", [gate_up], f"{p}.mlp.act", domain=DOMAIN)
    return act


def _standard_swiglu(b: _Builder, c: LlamaConfig, p: str, gate_up: str) -> str:
    """silu(gate) * up as Split, contrib ``QuickGelu`` (alpha 1: SiLU) and Mul."""
    split = "split.gate_up"
    if not any(t.name == split for t in b.inits):
        b.const(split, np.array([c.intermediate_size] * 2, np.int64))
    gate, up = b.op("Split", [gate_up, split], f"{p}.mlp.split", outputs=2, axis=-1)
    (silu,) = b.op("QuickGelu", [gate], f"{p}.mlp.silu", domain=CONTRIB, alpha=1.0)
    (act,) = b.op("Mul", [silu, up], f"{p}.mlp.act")
    return act


def build_decoder(
    ck: Checkpoint,
    weights: Mapping[str, Weight],
    max_context: int,
    embedding_dtype: type = np.float16,
    name: str = "edgepet_decoder",
    head: str = "separate",
    fused: bool = True,
    kv_dtype: type = np.float16,
) -> onnx.ModelProto:
    """The decoder graph for ``ck`` with projection weights ``weights`` (by projection name).

    Args:
        ck: the checkpoint (config, norms, embedding table).
        weights: projection name (see :func:`projections`) -> codes or float matrix.
        max_context: positions the RoPE tables cover (the longest cache + prompt).
        embedding_dtype: storage of the embedding table (float16 halves it; float32 exact).
        head: "separate" (the head is ``weights["lm_head"]``) or "shared": a tied head
            read from the table's 4-bit codes (:func:`shared_head_tensors`), which
            ``exporters.rewrite.quantize_embeddings`` must then make (block 32).
        fused: attention and the MLP activation as edgepet's fused ops
            (``GroupQueryRotaryAttention``, ``SwiGLU``; the default, and faster) with the
            shared-buffer cache, or as standard ONNX and contrib ops with the appending
            cache (the graph of bundles before them; tests compare the two).
        kv_dtype: the fused graph's cache: float16 (the default: half the bytes a decode
            step reads, as llama.cpp's f16 cache) or float32. The standard-op graph's is
            float32.
    """
    if head not in HEAD_CHOICES:
        raise ValueError(f"head {head!r} must be one of {', '.join(HEAD_CHOICES)}")
    if head == "shared" and not ck.config.tie_word_embeddings:
        raise ValueError("a shared head needs a model whose head is tied to its embeddings")
    c = ck.config
    b = _Builder()
    ids = "input_ids"
    inputs = [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("num_logits", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", "logits_seq", c.vocab_size])]
    if fused:
        inputs.append(helper.make_tensor_value_info(PAST_LENGTH, TensorProto.INT64, [1]))
    cache_shape = ["batch", c.num_kv_heads, "capacity" if fused else "past", c.head_dim]
    present_shape = ["batch", c.num_kv_heads, "capacity" if fused else "total", c.head_dim]
    if np.dtype(kv_dtype) not in (np.float16, np.float32):
        raise ValueError(f"kv_dtype {np.dtype(kv_dtype)} must be float16 or float32")
    cache_type = helper.np_dtype_to_tensor_dtype(np.dtype(kv_dtype if fused else np.float32))
    for i in range(c.num_layers):
        inputs += [helper.make_tensor_value_info(n, cache_type, cache_shape)
                   for n in past_names(i)]
        outputs += [helper.make_tensor_value_info(n, cache_type, present_shape)
                    for n in present_names(i)]

    cos, sin = rope_tables(c, max_context)
    rope = b.const("rope.cos", cos), b.const("rope.sin", sin)
    axis1 = b.const("axis1", np.array([1], np.int64))
    attention = _fused_attention if fused else _standard_attention(b, c, rope)

    table = b.const(TABLE, ck.embedding.astype(embedding_dtype))
    (x,) = b.op("Gather", [table, ids], "embed")
    if embedding_dtype != np.float32:
        (x,) = b.op("Cast", [x], "embed.float", to=TensorProto.FLOAT)

    def gamma(weight_name: str, out: str) -> str:
        return b.const(f"{out}.weight", ck.weights[weight_name].astype(np.float32))

    def add_norm(residual: str, update: str, weight_name: str, out: str) -> tuple[str, str]:
        """residual + update, and its RMS norm, in one node: (normed, sum)."""
        b.nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [residual, update, gamma(weight_name, out)],
            [out, "", "", f"{out}.residual"], name=out, domain=CONTRIB,
            epsilon=c.rms_norm_eps))
        return out, f"{out}.residual"

    (h,) = b.op("RMSNormalization", [x, gamma("model.layers.0.input_layernorm.weight",
                                               "layers.0.attn_norm")],
                "layers.0.attn_norm", epsilon=c.rms_norm_eps, axis=-1)
    for i in range(c.num_layers):
        p = f"layers.{i}"
        qkv = b.linear(h, weights[f"{p}.attn.qkv"], f"{p}.attn.qkv")
        att = attention(b, c, i, qkv, rope)
        o = b.linear(att, weights[f"{p}.attn.o"], f"{p}.attn.o")
        h, x = add_norm(x, o, f"model.layers.{i}.post_attention_layernorm.weight",
                        f"{p}.mlp_norm")
        gu = b.linear(h, weights[f"{p}.mlp.gate_up"], f"{p}.mlp.gate_up")
        act = _fused_swiglu(b, c, p, gu) if fused else _standard_swiglu(b, c, p, gu)
        down = b.linear(act, weights[f"{p}.mlp.down"], f"{p}.mlp.down")
        if i + 1 < c.num_layers:
            h, x = add_norm(x, down, f"model.layers.{i + 1}.input_layernorm.weight",
                            f"layers.{i + 1}.attn_norm")
        else:
            x, _ = add_norm(x, down, "model.norm.weight", "final_norm")

    (neg,) = b.op("Neg", ["num_logits"], "logits_start")
    end = b.const("int64_max", np.array([np.iinfo(np.int64).max], np.int64))
    (tail,) = b.op("Slice", [x, neg, end, axis1], "last_positions")
    if head == "shared":
        codes, scales, zeros = shared_head_tensors()
        blocks = b.const(f"{TABLE}.block_shape", np.array(
            [c.vocab_size, c.hidden_size // SHARED_HEAD_BLOCK, SHARED_HEAD_BLOCK // 2], np.int64))
        # A Reshape is a view in ONNX Runtime (measured: no second copy of the codes).
        (codes_3d,) = b.op("Reshape", [codes, blocks], f"{TABLE}.codes_as_blocks")
        (logits,) = b.op("MatMulNBits", [tail, codes_3d, scales, zeros], "lm_head",
                         domain=CONTRIB, K=c.hidden_size, N=c.vocab_size,
                         bits=SHARED_HEAD_BITS, block_size=SHARED_HEAD_BLOCK,
                         accuracy_level=4)
    else:
        logits = b.linear(tail, weights["lm_head"], "lm_head")
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))

    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, OP_VERSION),
                       helper.make_opsetid(CONTRIB, 1)],
        producer_name="edgepet",
    )
    model.ir_version = IR_VERSION
    return model


def float_weights(ck: Checkpoint) -> dict[str, np.ndarray]:
    """Every projection in float32: the weights of the fp32 reference graph."""
    return {p.name: p.weight(ck) for p in projections(ck.config)}


Quantizer = Callable[..., QuantizedTensor]


@dataclass(frozen=True)
class LayerChoice:
    """What one projection becomes: bits (None: float) and group size."""

    bits: Bits | None
    group_size: int | None


__all__ = [
    "HEAD_CHOICES",
    "OPSET",
    "PAST_LENGTH",
    "TABLE",
    "LayerChoice",
    "Projection",
    "build_decoder",
    "dequantize_table",
    "float_shared_head",
    "float_weights",
    "past_names",
    "present_names",
    "projection_node",
    "projection_tensors",
    "projections",
    "rope_tables",
    "shared_head_tensors",
    "step_feeds",
]
