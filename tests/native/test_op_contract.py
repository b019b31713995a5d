"""The op library's contract at its edges: attributes required and typed, size arithmetic
that cannot overflow, NaN and infinities propagated through ONNX Runtime, and the packed
layout reported to the code that checks bundles (docs/operator.md)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepet import _native, kernels, runtime
from edgepet.exporters.onnx import DOMAIN, ONNX_OPSET, lut_matmul_node
from edgepet.quant import quantize
from edgepet.runtime import session as sessions

FORMATS = [(b, s) for b in (1, 2, 3, 4, "ternary") for s in (True, False)
           if b != "ternary" or s]
ATTRIBUTES = {"K": 64, "N": 16, "bits": 2, "ternary": 0, "group_size": 32, "symmetric": 1,
              "layout": "tile32"}


def _model(qt, mutate=lambda node: None, k_dim="K"):
    node, inits = lut_matmul_node(qt, "x", "y", "layers.0.proj")
    mutate(node)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                   helper.make_opsetid(DOMAIN, 1)])


def _set(name, value):
    def mutate(node):
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        if value is not None:
            node.attribute.append(helper.make_attribute(name, value))
    return mutate


def _weights(k=64, n=16, bits=2, group=32, symmetric=True):
    rng = np.random.default_rng(0)
    return quantize(rng.standard_normal((n, k), dtype=np.float32), bits, group, symmetric)


def _session_error(model) -> str:
    with pytest.raises(Exception) as info:
        runtime.InferenceSession(model.SerializeToString())
    return str(info.value)


def test_exported_attributes_are_the_ones_checked_here():
    node, _ = lut_matmul_node(_weights(), "x", "y", "n")
    assert {a.name for a in node.attribute} == set(ATTRIBUTES)


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_every_attribute_is_required(name):
    msg = _session_error(_model(_weights(), _set(name, None)))
    assert f"LutMatMul 'layers.0.proj': missing attribute(s): {name}" in msg


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_every_attribute_has_its_type(name):
    """A float `ternary` once ran silently as plain 2-bit codes."""
    wrong = 7 if name == "layout" else float(ATTRIBUTES[name])
    msg = _session_error(_model(_weights(), _set(name, wrong)))
    want = "an int, expected a string" if name == "layout" else "a float, expected an int"
    assert f"attribute {name} is {want}" in msg


@pytest.mark.parametrize("name,value", [("ternary", 2), ("symmetric", -1), ("zero_level", 2)])
def test_flags_are_0_or_1(name, value):
    assert f"{name}={value} must be 0 or 1" in _session_error(_model(_weights(), _set(name, value)))


def test_the_optional_zero_level_attribute_has_its_type_too():
    """Absent, a node reads as op ABI 5 and before; present, an int 0 or 1."""
    msg = _session_error(_model(_weights(), _set("zero_level", 1.0)))
    assert "attribute zero_level is a float, expected an int" in msg


def test_group_size_near_2_to_63_means_one_group_not_bias_only():
    """ceil_div(K, group_size) once overflowed to zero groups, leaving only the bias."""
    qt = _weights(group="per-row")
    x = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
    want = kernels.lut_matmul(x, qt)
    model = _model(qt, _set("group_size", 2**63 - 1))
    got = runtime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0


@pytest.mark.parametrize("k,n", [(2**31, 16), (64, 2**31), (2**40, 2**40)])
def test_dimensions_beyond_2_to_31_are_refused(k, n):
    """At 2^40 x 2^40 the packed size once wrapped around int64."""
    msg = _session_error(_model(_weights(), lambda node: (_set("K", k)(node), _set("N", n)(node))))
    assert "at most 2147483647 each" in msg


def test_packed_size_of_the_largest_dimensions_does_not_wrap():
    """K * N products once wrapped in packed_bytes: the expected size is exact."""
    big = 2**31 - 1
    msg = _session_error(_model(_weights(), lambda node: (_set("K", big)(node),
                                                          _set("N", big)(node))))
    want = -(-big // 32) * 2 * -(-big // 8) * 16 * 2
    assert f"W has shape [512], expected [{want}]" in msg


@pytest.mark.parametrize("bits,symmetric", FORMATS)
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_through_onnx_runtime(bits, symmetric, special):
    """Once turned into finite numbers for symmetric codes (the AVX-512/AVX2 tables)."""
    qt = _weights(k=200, n=40, bits=bits, group=64, symmetric=symmetric)
    sess = runtime.InferenceSession(_model(qt).SerializeToString())
    x = np.random.default_rng(2).standard_normal((3, 200), dtype=np.float32)
    clean = sess.run(None, {"x": x})[0]
    x[1, 150] = special
    y = sess.run(None, {"x": x})[0]
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(y[[0, 2]], clean[[0, 2]])


ORT_FUZZ_CASES = 40


def test_fuzz_onnx_runtime_equals_the_native_module_bit_for_bit():
    """Random formats, shapes and magnitudes (NaN, inf, 1e-38, 1e30) through the op: the
    same kernel as edgepet.kernels.lut_matmul, so the same bits (NaN where NaN)."""
    rng = np.random.default_rng(2026)
    for case in range(ORT_FUZZ_CASES):
        bits, symmetric = FORMATS[int(rng.integers(len(FORMATS)))]
        m, n, k = int(rng.integers(1, 5)), int(rng.integers(1, 80)), int(rng.integers(1, 300))
        group = [32, 64, "per-row"][int(rng.integers(3))]
        qt = quantize(rng.standard_normal((n, k), dtype=np.float32), bits, group, symmetric)
        magnitude = [1.0, 1e-38, 1e30][int(rng.integers(3))]
        x = (rng.standard_normal((m, k)) * magnitude).astype(np.float32)
        x[rng.integers(m), rng.integers(k)] = [np.nan, np.inf, 1.0][int(rng.integers(3))]
        got = runtime.InferenceSession(_model(qt).SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, kernels.lut_matmul(x, qt), err_msg=f"case {case}")


def test_library_reports_its_packed_layout():
    """edgepet_op_layout(): what a bundle's operator.layout is checked against."""
    path = runtime.op_library_path()
    assert sessions.library_operator(path) == (_native.OP_ABI_VERSION, kernels.LAYOUT)
