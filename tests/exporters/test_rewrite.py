"""The MatMul/Gemm -> LutMatMul rewrite on small hand-made graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepet.exporters.rewrite import (
    QuantPolicy,
    dequantized_twin,
    digest,
    rewrite_linears,
)
from edgepet.runtime import InferenceSession

RNG = np.random.default_rng(0)


def _model(nodes, inits, k=40, out_shape=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    return InferenceSession(model).run(None, {"x": x})[0]


def _check(model, bits=4, group_size=32, **kw):
    result = rewrite_linears(model, QuantPolicy(bits=bits, group_size=group_size), **kw)
    x = RNG.standard_normal((5, 40)).astype(np.float32)
    twin = dequantized_twin(result.model, result.quantized)
    y_lut, y_twin = _run(result.model, x), _run(twin, x)
    assert np.linalg.norm(y_lut - y_twin) / np.linalg.norm(y_twin) < 0.02
    return result, x


def test_matmul_with_following_bias_add_becomes_one_node():
    w = RNG.standard_normal((40, 24)).astype(np.float32)  # MatMul holds [K, N]
    b = RNG.standard_normal(24).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["t"]),
                    helper.make_node("Add", ["b", "t"], ["y"])], {"w": w, "b": b})
    result, x = _check(model, names={digest(w.T): "proj.weight"})
    assert [n.op_type for n in result.model.graph.node] == ["LutMatMul"]
    assert result.layers[0].name == "proj" and result.layers[0].bias
    assert {t.name for t in result.model.graph.initializer} == {
        "proj.weight_packed", "proj.scales", "proj.bias"}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_either_weight_orientation(trans_b):
    w = RNG.standard_normal((24, 40)).astype(np.float32)  # [N, K]
    b = RNG.standard_normal(24).astype(np.float32)
    stored = w if trans_b else w.T
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)],
                   {"w": np.ascontiguousarray(stored), "b": b})
    result, x = _check(model, bits=2)
    y = _run(result.model, x)
    exact = x @ w.T + b
    assert np.linalg.norm(y - exact) / np.linalg.norm(exact) < 1.0  # 2-bit, but the same map
    assert result.layers[0].n == 24 and result.layers[0].k == 40


def test_transposed_constant_weight_is_followed():
    w = RNG.standard_normal((24, 40)).astype(np.float32)
    model = _model([helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
                    helper.make_node("MatMul", ["x", "wt"], ["y"])], {"w": w})
    result, _ = _check(model, bits="ternary")
    assert [n.op_type for n in result.model.graph.node] == ["LutMatMul"]
    assert "w" not in {t.name for t in result.model.graph.initializer}  # pruned


def test_matmul_of_two_activations_is_left_alone():
    model = _model([helper.make_node("MatMul", ["x", "xt"], ["y"]),
                    helper.make_node("Transpose", ["x"], ["xt"])], {})
    model.graph.node.sort(key=lambda n: n.op_type != "Transpose")
    result = rewrite_linears(model, QuantPolicy())
    assert result.layers == []
    assert sorted(n.op_type for n in result.model.graph.node) == ["MatMul", "Transpose"]


def test_keep_patterns_leave_layers_in_float():
    w1 = RNG.standard_normal((40, 40)).astype(np.float32)
    w2 = RNG.standard_normal((40, 8)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w1"], ["h"]),
                    helper.make_node("MatMul", ["h", "w2"], ["y"])], {"w1": w1, "w2": w2})
    names = {digest(w1.T): "body.fc", digest(w2.T): "lm_head"}
    result = rewrite_linears(model, QuantPolicy(keep=("lm_head",)), names=names)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["LutMatMul", "MatMul"]
    kept = next(r for r in result.layers if r.name == "lm_head")
    assert kept.bits is None and kept.stored_bytes == kept.float_bytes
    result = rewrite_linears(model, QuantPolicy(keep=("body",)), names=names)
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "LutMatMul"]


def test_shape_of_a_lutmatmul_output_with_an_unnamed_dim_is_right():
    from edgepet.exporters.onnx import lut_matmul_node
    from edgepet.quant import quantize

    node, inits = lut_matmul_node(quantize(RNG.standard_normal((8, 32)).astype(np.float32)),
                                  "x", "t", "lin")
    graph = helper.make_graph(
        [node, helper.make_node("Shape", ["t"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.edgepet", 1)])
    shape = InferenceSession(model).run(None, {"x": np.ones((3, 32), np.float32)})[0]
    assert shape.tolist() == [3, 8]


def test_rewritten_graph_passes_the_onnx_checker():
    w = RNG.standard_normal((40, 24)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w},
                   out_shape=["M", 24])
    result = rewrite_linears(model, QuantPolicy())
    onnx.checker.check_model(result.model)
