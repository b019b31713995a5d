"""Fusing LutMatMul projections that read one input: fewer calls, the same numbers."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepet import runtime
from edgepet.exporters.fuse import fuse_shared_inputs
from edgepet.exporters.rewrite import QuantPolicy, dequantized_twin, rewrite_linears


def _float_model(widths, k=96, biases=(), extra_input=False):
    """x [M, K] -> one MatMul per width (Q/K/V-like), each a graph output; with
    `extra_input` one more MatMul reads another value (it must stay alone)."""
    rng = np.random.default_rng(3)
    nodes, inits, outputs = [], [], []
    for j, n in enumerate(widths):
        w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.1,
                                    f"attn.p{j}.weight")
        inits.append(w)
        out = f"y{j}"
        if j in biases:
            nodes.append(helper.make_node("MatMul", ["x", w.name], [f"{out}.mm"]))
            b = numpy_helper.from_array(rng.standard_normal(n, dtype=np.float32), f"b{j}")
            inits.append(b)
            nodes.append(helper.make_node("Add", [f"{out}.mm", b.name], [out]))
        else:
            nodes.append(helper.make_node("MatMul", ["x", w.name], [out]))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["M", n]))
    if extra_input:
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        w = numpy_helper.from_array(rng.standard_normal((k, 32), dtype=np.float32), "other.w")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", ["r", w.name], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["M", 32]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["M", k])], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    sess = runtime.InferenceSession(model.SerializeToString(), threads=2)
    return sess.run(None, {"x": x})


def _lut_nodes(model):
    return [n for n in model.graph.node if n.op_type == "LutMatMul"]


@pytest.mark.parametrize("bits,symmetric", [(2, True), (4, False), ("ternary", True),
                                            (3, True), (3, "zero-level"), (4, "zero-level")])
@pytest.mark.parametrize("widths", [(64, 32, 32), (40, 24, 24), (96, 200)])
def test_fused_projections_equal_unfused_bit_for_bit(bits, symmetric, widths):
    result = rewrite_linears(_float_model(widths), QuantPolicy(
        bits=bits, group_size=32, symmetric=bool(symmetric),
        zero_level=symmetric == "zero-level"))
    fused = fuse_shared_inputs(result)
    assert all(qt.zero_level == (symmetric == "zero-level")
               for qt, _ in fused.quantized.values())
    assert len(_lut_nodes(result.model)) == len(widths)
    assert len(_lut_nodes(fused.model)) == 1
    onnx.checker.check_model(fused.model)
    x = np.random.default_rng(4).standard_normal((3, 96), dtype=np.float32)
    for m in (1, 3):
        for got, want in zip(_run(fused.model, x[:m]), _run(result.model, x[:m]), strict=True):
            np.testing.assert_array_equal(got, want)


def test_mixed_biases_keep_every_output():
    result = rewrite_linears(_float_model((64, 32, 32), biases=(0, 2)),
                             QuantPolicy(bits=2, group_size=32))
    fused = fuse_shared_inputs(result)
    assert len(_lut_nodes(fused.model)) == 1
    x = np.random.default_rng(5).standard_normal((2, 96), dtype=np.float32)
    for got, want in zip(_run(fused.model, x), _run(result.model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_only_nodes_reading_the_same_input_fuse():
    result = rewrite_linears(_float_model((64, 32), extra_input=True),
                             QuantPolicy(bits=2, group_size=32))
    fused = fuse_shared_inputs(result)
    assert sorted(n.name for n in _lut_nodes(fused.model)) == ["attn.p0+p1", "other.w"]
    layer_nodes = {r.name: r.node for r in fused.layers}
    assert layer_nodes["attn.p0"] == layer_nodes["attn.p1"] == "attn.p0+p1"


def test_different_formats_are_not_fused():
    result = rewrite_linears(_float_model((64, 32)), QuantPolicy(bits=2, group_size=32))
    # Re-quantize one node at another width: a format mismatch must keep them apart.
    name = _lut_nodes(result.model)[1].name
    qt, bias = result.quantized[name]
    from edgepet.quant import quantize
    result.quantized[name] = (quantize(qt.dequantize(), 4, 32), bias)
    assert fuse_shared_inputs(result) is result


def test_fused_graph_has_a_dequantized_twin_that_agrees():
    result = fuse_shared_inputs(rewrite_linears(_float_model((64, 32, 32), biases=(1,)),
                                                QuantPolicy(bits=4, group_size=32)))
    twin = dequantized_twin(result.model, result.quantized)
    x = np.random.default_rng(6).standard_normal((2, 96), dtype=np.float32)
    import onnxruntime as ort
    plain = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(_run(result.model, x), plain.run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * np.abs(want).max())
