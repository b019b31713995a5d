"""Fuse ``LutMatMul`` projections that read the same input into one node plus a Split.

A decoder layer's Q, K and V projections (and its gate and up projections) read the same
activations. As separate nodes, each call builds the same activation tables and pays the
same fixed per-call cost; on a small model's shapes (576 x 576) that cost is as large as
the product. Concatenating the weights along N gives one ``LutMatMul`` whose output a
``Split`` cuts back into the original outputs: a third of the calls, and the same
numbers -- every output row is computed the same way whichever tile it lands in, so the
fused graph's outputs equal the unfused graph's bit for bit (tests/exporters/test_fuse.py).

Only nodes of the same format are fused (bits, ternary, group size, symmetry, K), and
never a switchable node: its packed tensors are overridden per adapter by name.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepet.exporters.rewrite import (
    RewriteResult,
    _copy,
    _set_nodes,
    _unique,
    _value_names,
    prune,
)
from edgepet.quant.tensor import QuantizedTensor
from edgepet.runtime.operator import DOMAIN, OP_TYPE


def fuse_shared_inputs(result: RewriteResult) -> RewriteResult:
    """``result`` with each set of same-format LutMatMul nodes reading one input fused.

    The fused node is named after its members (``layers.0.attn.q+k+v``); the layer
    records of the members name it as their node. ``result`` itself is not modified.
    """
    switchable = {r.node for r in result.layers if r.switchable}
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, node in enumerate(result.model.graph.node):
        if (node.domain == DOMAIN and node.op_type == OP_TYPE and node.name in result.quantized
                and node.name not in switchable):
            qt = result.quantized[node.name][0]
            groups[(node.input[0], qt.shape[1], qt.bits, qt.group_size, qt.symmetric,
                    qt.zero_level)].append(i)
    fusable = [members for members in groups.values() if len(members) > 1]
    if not fusable:
        return result

    from edgepet.exporters.onnx import lut_matmul_node  # needs the native packer

    model = _copy(result.model)
    nodes = list(model.graph.node)
    quantized = dict(result.quantized)
    renamed: dict[str, str] = {}
    taken = {n.name for n in nodes if n.name}
    values = _value_names(model.graph)
    replacement: dict[int, list[onnx.NodeProto]] = {}
    inits: list[onnx.TensorProto] = []
    for members in fusable:
        names = [nodes[i].name for i in members]
        parts = [quantized.pop(name) for name in names]
        qt = concat_rows([p[0] for p in parts])
        bias = _concat_bias(parts)
        fused_name = _unique(_fused_name(names), taken, values)
        fused_out = _unique(f"{fused_name}.output", taken, values)
        node, node_inits = lut_matmul_node(qt, nodes[members[0]].input[0], fused_out,
                                           fused_name, bias)
        sizes = numpy_helper.from_array(
            np.array([p[0].shape[0] for p in parts], np.int64), f"{fused_name}.split")
        split = helper.make_node("Split", [fused_out, sizes.name],
                                 [nodes[i].output[0] for i in members],
                                 name=f"{fused_name}.split", axis=-1)
        replacement[members[0]] = [node, split]
        for i in members[1:]:
            replacement[i] = []
        inits += [*node_inits, sizes]
        quantized[fused_name] = (qt, bias)
        renamed.update(dict.fromkeys(names, fused_name))
    _set_nodes(model.graph, [n for i, node in enumerate(nodes)
                             for n in replacement.get(i, [node])])
    model.graph.initializer.extend(inits)
    prune(model.graph)
    layers = list(result.layers)
    for record in layers:
        record.node = renamed.get(record.node, record.node)
    return RewriteResult(model, layers, quantized)


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """One QuantizedTensor holding the rows of ``parts`` (same K and format) in order."""
    first = parts[0]
    zeros = (None if first.zero_points is None
             else np.concatenate([p.zero_points for p in parts]))
    return QuantizedTensor(np.concatenate([p.codes for p in parts]),
                           np.concatenate([p.scales for p in parts]), zeros, first.bits,
                           first.group_size, first.symmetric, first.zero_level)


def _concat_bias(parts: list[tuple[QuantizedTensor, np.ndarray | None]]) -> np.ndarray | None:
    if all(bias is None for _, bias in parts):
        return None
    # A missing bias is zero: y + 0 == y, so the unbiased members' outputs are unchanged.
    return np.concatenate([np.zeros(qt.shape[0], np.float32) if bias is None
                           else np.asarray(bias, np.float32) for qt, bias in parts])


def _fused_name(names: list[str]) -> str:
    """``a.b.q`` + ``a.b.k`` + ``a.b.v`` -> ``a.b.q+k+v``."""
    split = [n.split(".") for n in names]
    common = 0
    while all(len(s) > common + 1 and s[common] == split[0][common] for s in split):
        common += 1
    prefix = ".".join(split[0][:common])
    rest = "+".join(".".join(s[common:]) for s in split)
    return f"{prefix}.{rest}" if prefix else rest
