"""ai.edgepet.GroupQueryRotaryAttention and ai.edgepet.SwiGLU inside ONNX Runtime: the
numbers of a direct numpy computation, and every malformed model or input an ORT error
naming the node and the mismatch (never a crash)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepet import runtime
from edgepet.exporters.onnx import DOMAIN, ONNX_OPSET


def _tables(positions, d, theta=10000.0):
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(positions)[:, None] * inv[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _attention_model(heads, kv_heads, d, positions=64, scale=None, tables=None,
                     shared=False, **attrs):
    """One attention node; ``shared``: with the past_length input (cache buffers)."""
    cos, sin = tables if tables is not None else _tables(positions, d)
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads,
             "scale": float(scale if scale is not None else d ** -0.5), **attrs}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    inputs = ["qkv", "pk", "pv", "cos", "sin"] + (["past_length"] if shared else [])
    node = helper.make_node("GroupQueryRotaryAttention", inputs,
                            ["out", "k", "v"], name="layers.0.attn", domain=DOMAIN, **attrs)
    width = (heads + 2 * kv_heads) * d
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, ["B", "S", width]),
         helper.make_tensor_value_info("pk", TensorProto.FLOAT, ["B", kv_heads, "P", d]),
         helper.make_tensor_value_info("pv", TensorProto.FLOAT, ["B", kv_heads, "P", d])]
        + ([helper.make_tensor_value_info("past_length", TensorProto.INT64, [1])]
           if shared else []),
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "k", "v")],
        initializer=[numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")])
    return _model(graph)


def _model(graph):
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                   helper.make_opsetid(DOMAIN, 1)])


def _rope(x, pos, cos, sin):
    half = x.shape[-1] // 2
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]  # [seq, 1, half]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


def _direct(qkv, pk, pv, heads, kv_heads, cos, sin, scale):
    """Split, RoPE, concat and causal grouped-query attention in float64."""
    qkv, pk, pv = (np.asarray(a, np.float64) for a in (qkv, pk, pv))
    b, s, _ = qkv.shape
    d, past = pk.shape[3], pk.shape[2]
    q = qkv[..., :heads * d].reshape(b, s, heads, d)
    k = qkv[..., heads * d:(heads + kv_heads) * d].reshape(b, s, kv_heads, d)
    v = qkv[..., (heads + kv_heads) * d:].reshape(b, s, kv_heads, d)
    pos = np.arange(past, past + s)
    q, k = _rope(q, pos, cos, sin), _rope(k, pos, cos, sin)
    keys = np.concatenate([pk, k.transpose(0, 2, 1, 3)], 2)
    values = np.concatenate([pv, v.transpose(0, 2, 1, 3)], 2)
    group = heads // kv_heads
    kh = np.repeat(keys, group, 1)  # [b, heads, total, d]
    vh = np.repeat(values, group, 1)
    scores = np.einsum("bshd,bhtd->bhst", q, kh) * scale
    mask = np.arange(past + s)[None, :] <= pos[:, None]
    scores = np.where(mask, scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhst,bhtd->bshd", w, vh).reshape(b, s, heads * d)
    return out, keys, values


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 2, 16), (3, 3, 8), (9, 3, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_attention_equals_direct_computation_for_prefill_and_decode(heads, kv_heads, d,
                                                                    threads):
    rng = np.random.default_rng(heads * d)
    cos, sin = _tables(200, d)
    session = runtime.InferenceSession(_attention_model(heads, kv_heads, d, tables=(cos, sin)),
                                       threads=threads)
    width = (heads + 2 * kv_heads) * d
    # (batch, seq, past): first prompt, long prompt (parallel path), decode, chunked prompt
    for batch, seq, past in [(1, 5, 0), (1, 150, 0), (1, 1, 37), (2, 1, 9), (1, 7, 20)]:
        qkv = rng.standard_normal((batch, seq, width), dtype=np.float32)
        pk = rng.standard_normal((batch, kv_heads, past, d), dtype=np.float32)
        pv = rng.standard_normal((batch, kv_heads, past, d), dtype=np.float32)
        got = session.run(None, {"qkv": qkv, "pk": pk, "pv": pv})
        want = _direct(qkv, pk, pv, heads, kv_heads, cos, sin, d ** -0.5)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_shared_buffer_cache_gives_the_appending_cache_numbers(threads):
    """past_length = L: the first L rows of the buffers are the cache, the new rows are
    written at L.., the rest is passed through; out equals the appending op's."""
    heads, kv_heads, d, capacity = 9, 3, 64, 160
    rng = np.random.default_rng(7)
    cos, sin = _tables(200, d)
    shared = runtime.InferenceSession(
        _attention_model(heads, kv_heads, d, tables=(cos, sin), shared=True), threads=threads)
    for batch, seq, past in [(1, 5, 0), (1, 150, 0), (1, 1, 37), (2, 1, 9), (1, 7, 20)]:
        qkv = rng.standard_normal((batch, seq, (heads + 2 * kv_heads) * d), dtype=np.float32)
        pk, pv = (rng.standard_normal((batch, kv_heads, capacity, d), dtype=np.float32)
                  for _ in range(2))
        out, k, v = shared.run(None, {"qkv": qkv, "pk": pk, "pv": pv,
                                      "past_length": np.array([past], np.int64)})
        want = _direct(qkv, pk[:, :, :past], pv[:, :, :past], heads, kv_heads, cos, sin,
                       d ** -0.5)
        np.testing.assert_allclose(out, want[0], rtol=1e-4, atol=1e-5)
        for got, buffer, filled in ((k, pk, want[1]), (v, pv, want[2])):
            assert got.shape == buffer.shape
            np.testing.assert_allclose(got[:, :, :past + seq], filled, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(got[:, :, past + seq:], buffer[:, :, past + seq:])


@pytest.mark.parametrize("shared", [False, True])
def test_a_float16_cache_is_written_rounded_and_read_as_floats(shared):
    heads, kv_heads, d, past, seq = 9, 3, 64, 5, 3
    model = _attention_model(heads, kv_heads, d, shared=shared)
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in ("pk", "pv", "k", "v"):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    rng = np.random.default_rng(11)
    qkv = rng.standard_normal((1, seq, (heads + 2 * kv_heads) * d), dtype=np.float32)
    rows = past + (3 if shared else 0)  # a buffer holds more than the filled positions
    pk, pv = (rng.standard_normal((1, kv_heads, rows, d)).astype(np.float16) for _ in range(2))
    feeds = {"qkv": qkv, "pk": pk, "pv": pv}
    if shared:
        feeds["past_length"] = np.array([past], np.int64)
    out, k, v = runtime.InferenceSession(model).run(None, feeds)
    cos, sin = _tables(64, d)
    want = _direct(qkv, pk[:, :, :past].astype(np.float32), pv[:, :, :past].astype(np.float32),
                   heads, kv_heads, cos, sin, d ** -0.5)
    assert k.dtype == v.dtype == np.float16 and out.dtype == np.float32
    # The new rows are the float ones rounded to fp16 (within an fp16 step: the op rotates
    # in float32, the direct computation in float64); attention reads the rounded ones.
    for got, filled in ((k, want[1]), (v, want[2])):
        np.testing.assert_allclose(got[:, :, :past + seq].astype(np.float64), filled,
                                   rtol=2.0 ** -10, atol=2.0 ** -24)
    np.testing.assert_allclose(out, want[0], rtol=2e-3, atol=2e-3)


def test_a_shared_buffer_bound_as_input_and_output_is_written_in_place():
    import onnxruntime as ort

    heads, kv_heads, d = 4, 2, 16
    cos, sin = _tables(64, d)
    session = runtime.InferenceSession(
        _attention_model(heads, kv_heads, d, tables=(cos, sin), shared=True))
    rng = np.random.default_rng(3)
    keys, values = (np.zeros((1, kv_heads, 32, d), np.float32) for _ in range(2))
    binding = session.io_binding()
    for name, out, array in (("pk", "k", keys), ("pv", "v", values)):
        value = ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(out, value)
    qkvs = [rng.standard_normal((1, n, (heads + 2 * kv_heads) * d), dtype=np.float32)
            for n in (6, 1, 1)]
    length = 0
    for qkv in qkvs:
        binding.bind_cpu_input("qkv", qkv)
        binding.bind_cpu_input("past_length", np.array([length], np.int64))
        binding.bind_output("out")  # ORT's own buffer, of this call's shape
        session.run_with_iobinding(binding)
        length += qkv.shape[1]
    # The numpy arrays are the cache: the three calls' rows, as one appending call makes.
    want = _direct(np.concatenate(qkvs, 1), keys[:, :, :0], values[:, :, :0], heads,
                   kv_heads, cos, sin, d ** -0.5)
    np.testing.assert_allclose(keys[:, :, :length], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values[:, :, :length], want[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(binding.get_outputs()[-1].numpy(), want[0][:, -1:],  # out
                               rtol=1e-4, atol=1e-5)
    assert not keys[:, :, length:].any()


@pytest.mark.parametrize("length,message", [
    (np.array([-1], np.int64), "past_length -1 \\+ 2 new tokens do not fit the cache "
                               "buffers' 8 positions"),
    (np.array([7], np.int64), "past_length 7 \\+ 2 new tokens do not fit"),
    (np.array([1, 2], np.int64), r"past_length must be one int64 .*got \[2\]"),
])
def test_a_past_length_outside_the_buffers_is_an_error(length, message):
    model = _attention_model(4, 2, 16, shared=True)
    for value in model.graph.input:
        value.type.tensor_type.ClearField("shape")
    feeds = {"qkv": np.zeros((1, 2, 128), np.float32), "past_length": length,
             "pk": np.zeros((1, 2, 8, 16), np.float32), "pv": np.zeros((1, 2, 8, 16), np.float32)}
    with pytest.raises(Exception, match="GroupQueryRotaryAttention 'layers.0.attn': " + message):
        runtime.InferenceSession(model).run(None, feeds)


def _run_attention(model, batch=1, seq=1, past=0, heads=4, kv_heads=2, d=16, **shapes):
    rng = np.random.default_rng(0)
    width = shapes.get("width", (heads + 2 * kv_heads) * d)
    feeds = {"qkv": rng.standard_normal((batch, seq, width), dtype=np.float32),
             "pk": np.zeros(shapes.get("pk", (batch, kv_heads, past, d)), np.float32),
             "pv": np.zeros(shapes.get("pv", (batch, kv_heads, past, d)), np.float32)}
    return runtime.InferenceSession(model).run(None, feeds)


def test_a_position_beyond_the_rope_tables_is_an_error_not_a_read_past_them():
    model = _attention_model(4, 2, 16, positions=12)
    assert _run_attention(model, seq=2, past=10)[1].shape == (1, 2, 12, 16)
    with pytest.raises(Exception, match="layers.0.attn.*position 12 .*beyond the RoPE "
                                        "tables' 12 positions.*--max-context"):
        _run_attention(model, seq=3, past=10)


@pytest.mark.parametrize("attrs,message", [
    ({"num_heads": 3}, "num_heads=3, kv_num_heads=2: .*multiple of kv_num_heads"),
    ({"kv_num_heads": 0}, "num_heads=4, kv_num_heads=0"),
    ({"num_heads": 2 ** 62, "kv_num_heads": 2 ** 61},
     "num_heads=4611686018427387904, .*both must be in 1..1048576"),
    ({"scale": "drop"}, "missing or mistyped attribute.*scale"),
    ({"num_heads": "drop"}, "missing or mistyped attribute.*num_heads"),
    ({"scale": 0.0}, "scale=0.0+ must be a positive finite number"),
])
def test_bad_attributes_are_refused_when_the_session_is_made(attrs, message):
    model = _attention_model(4, 2, 16, **{k: v for k, v in attrs.items() if v != "drop"})
    node = model.graph.node[0]
    kept = [a for a in node.attribute if attrs.get(a.name) != "drop"]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(Exception, match="GroupQueryRotaryAttention 'layers.0.attn': " + message):
        runtime.InferenceSession(model).run(None, {
            "qkv": np.zeros((1, 1, 128), np.float32),
            "pk": np.zeros((1, 2, 0, 16), np.float32), "pv": np.zeros((1, 2, 0, 16), np.float32)})


@pytest.mark.parametrize("shapes,message", [
    ({"width": 120}, r"qkv has shape \[1, 1, 120\], expected \[batch, seq, 128\]"),
    ({"pk": (1, 2, 3, 16), "pv": (1, 2, 4, 16)}, r"past_key \[1, 2, 3, 16\] and past_value"),
])
def test_inputs_that_disagree_are_refused_at_run_time(shapes, message):
    model = _attention_model(4, 2, 16)
    # Declared shapes are left out so that ONNX Runtime hands the mismatch to the op.
    for value in model.graph.input:
        value.type.tensor_type.ClearField("shape")
    with pytest.raises(Exception, match=message):
        _run_attention(model, **shapes)


def test_odd_rope_tables_are_refused():
    cos, sin = _tables(8, 16)
    model = _attention_model(4, 2, 16, tables=(cos, sin[:, :7]))
    with pytest.raises(Exception, match="cos_cache .* and sin_cache .* must both be"):
        _run_attention(model)


def _swiglu_model(last="W"):
    node = helper.make_node("SwiGLU", ["x"], ["y"], name="layers.0.mlp.act", domain=DOMAIN)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", last])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return _model(graph)


@pytest.mark.parametrize("shape", [(1, 1, 3072), (2, 5, 14), (1, 300, 512), (4, 0, 6)])
def test_swiglu_is_silu_of_gate_times_up(shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    y = runtime.InferenceSession(_swiglu_model(), threads=2).run(None, {"x": x})[0]
    gate, up = np.split(x.astype(np.float64), 2, -1)
    np.testing.assert_allclose(y, gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)


def test_swiglu_of_an_odd_width_is_an_error():
    with pytest.raises(Exception, match=r"SwiGLU 'layers.0.mlp.act': gate_up has shape "
                                        r"\[1, 1, 7\], its last dimension must be even"):
        runtime.InferenceSession(_swiglu_model()).run(None, {"x": np.ones((1, 1, 7),
                                                                          np.float32)})
