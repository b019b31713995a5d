"""ai.edgepet.LutMatMul inside ONNX Runtime: same numbers as the native module,
and every malformed model is an ORT error naming the node and the mismatch."""

import os
import platform
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepet import kernels, runtime
from edgepet.exporters.onnx import DOMAIN, ONNX_OPSET, linear_model, lut_matmul_node
from edgepet.quant import QuantizedTensor, quantize

FORMATS = [(b, s) for b in (1, 2, 3, 4, "ternary") for s in (True, False)
           if b != "ternary" or s] + [(b, "zero-level") for b in (2, 3, 4)]


@pytest.mark.parametrize("bits,symmetric", FORMATS)
def test_session_equals_native_module(bits, symmetric):
    rng = np.random.default_rng(0)
    qt = quantize(rng.standard_normal((77, 300), dtype=np.float32), bits, 64, bool(symmetric),
                  zero_level=symmetric == "zero-level")
    bias = rng.standard_normal(77, dtype=np.float32)
    sess = runtime.InferenceSession(linear_model(qt, bias), threads=2)
    for m in (1, 2, 7, 64):
        x = rng.standard_normal((m, 300), dtype=np.float32)
        got = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, kernels.lut_matmul(x, qt, bias), rtol=1e-6, atol=1e-6)


def test_rank_three_input_and_shape_inference():
    rng = np.random.default_rng(1)
    qt = quantize(rng.standard_normal((16, 64), dtype=np.float32), 2, 32)
    node, inits = lut_matmul_node(qt, "x", "y", "proj")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = _model(graph)
    x = rng.standard_normal((2, 3, 64), dtype=np.float32)
    y = runtime.InferenceSession(model).run(None, {"x": x})[0]
    assert y.shape == (2, 3, 16)
    np.testing.assert_allclose(y, kernels.lut_matmul(x, qt), rtol=1e-6)


def test_library_loads_in_plain_onnxruntime():
    qt = quantize(np.ones((8, 32), np.float32), 4, 32)
    options = ort.SessionOptions()
    options.register_custom_ops_library(runtime.op_library_path())
    sess = ort.InferenceSession(linear_model(qt).SerializeToString(), options)
    assert sess.run(None, {"x": np.ones((1, 32), np.float32)})[0].shape == (1, 8)


def _model(graph):
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
    )


def _broken(mutate, k=64, n=16, bits=2, symmetric=True):
    """A one-node model whose input width is symbolic, so that only our op checks it."""
    qt = quantize(np.random.default_rng(2).standard_normal((n, k), dtype=np.float32), bits, 32,
                  symmetric)
    node, inits = lut_matmul_node(qt, "x", "y", "layers.3.mlp.up")
    inputs = list(node.input)
    mutate(node, inits, inputs)
    del node.input[:]
    node.input.extend(inputs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", "K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return _model(graph)


def _set_attr(node, name, value):
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _replace_init(inits, suffix, array):
    for i, t in enumerate(inits):
        if t.name.endswith(suffix):
            inits[i] = numpy_helper.from_array(array, t.name)


def _error(model, x):
    with pytest.raises(Exception) as info:
        sess = runtime.InferenceSession(model.SerializeToString())
        sess.run(None, {"x": x})
    return str(info.value)


X = np.ones((2, 64), np.float32)


def test_input_width_disagreeing_with_k_names_node():
    msg = _error(_broken(lambda *_: None), np.ones((2, 60), np.float32))
    assert "LutMatMul 'layers.3.mlp.up'" in msg and "last dimension must be K=64" in msg


def test_truncated_weight_buffer_names_node():
    def cut(node, inits, inputs):
        _replace_init(inits, "weight_packed", numpy_helper.to_array(inits[0])[:-1].copy())

    msg = _error(_broken(cut), X)
    assert "'layers.3.mlp.up'" in msg and "W has shape [511], expected [512]" in msg


def test_scales_for_wrong_group_count_names_node():
    def bad(node, inits, inputs):
        _replace_init(inits, "scales", np.ones((1, 4, 32), np.float16))

    msg = _error(_broken(bad), X)
    assert "scales has shape [1, 4, 32], expected [1, 2, 32] (K=64, N=16, group_size=32)" in msg


@pytest.mark.parametrize("symmetric", [True, False])
def test_abi1_model_with_float32_scales_is_refused_with_re_export(symmetric):
    def old(node, inits, inputs):
        for suffix in ("scales", "zero_points"):
            for t in inits:
                if t.name.endswith(suffix):
                    _replace_init(inits, suffix,
                                  numpy_helper.to_array(t).astype(np.float32))

    msg = _error(_broken(old, symmetric=symmetric), X)
    assert "'layers.3.mlp.up'" in msg and "scales is float32, expected float16" in msg
    assert "re-export the model" in msg


@pytest.mark.parametrize("bits", [2, 4])
def test_abi2_model_with_tile32_layout_is_refused_with_re_export(bits):
    """ABI 2 stored 4-bit codes as bit-planes under layout "tile32"; this library reads
    nibbles: a model of the old layout is refused, never misread."""
    def old(node, inits, inputs):
        for a in node.attribute:
            if a.name == "layout":
                a.s = b"tile32"

    msg = _error(_broken(old, bits=bits), X)
    assert "'layers.3.mlp.up'" in msg and "layout 'tile32' (LutMatMul ABI 2" in msg
    assert f"it reads '{kernels.LAYOUT}'" in msg and "re-export the model" in msg


def _abi3(node, inits, inputs):
    for a in node.attribute:
        if a.name == "layout":
            a.s = b"tile32-nibble4"


@pytest.mark.parametrize("symmetric", [True, False])
def test_abi3_model_with_3bit_weights_is_refused_with_re_export(symmetric):
    """ABI 3 ("tile32-nibble4") stored 3-bit codes as bit-planes; this library reads them
    as quartets of pair values: such a node is refused, never misread."""
    msg = _error(_broken(_abi3, bits=3, symmetric=symmetric), X)
    assert "'layers.3.mlp.up'" in msg and "layout 'tile32-nibble4' (LutMatMul ABI 3" in msg
    assert "3-bit codes were bit-planes" in msg
    assert f"it reads '{kernels.LAYOUT}'" in msg and "re-export the model" in msg


@pytest.mark.parametrize("bits", [1, 2, 4, "ternary"])
def test_abi3_model_without_3bit_weights_still_runs(bits):
    """ABI 4 changed the 3-bit layout alone: an ABI-3 node of another width is read as it
    is, with the same numbers as this version's."""
    x = np.random.default_rng(3).standard_normal((3, 64), dtype=np.float32)
    old = runtime.InferenceSession(_broken(_abi3, bits=bits).SerializeToString())
    new = runtime.InferenceSession(_broken(lambda *_: None, bits=bits).SerializeToString())
    np.testing.assert_array_equal(old.run(None, {"x": x})[0], new.run(None, {"x": x})[0])


def test_weights_given_at_run_time_are_checked_per_call():
    """W as a graph input (not an initializer): read and checked on every call."""
    rng = np.random.default_rng(8)
    qt = quantize(rng.standard_normal((40, 64), dtype=np.float32), 2, 32)
    node, inits = lut_matmul_node(qt, "x", "y", "proj")
    w = inits.pop(0)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 64]),
         helper.make_tensor_value_info(w.name, TensorProto.UINT8, ["B"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    sess = runtime.InferenceSession(_model(graph))
    x = rng.standard_normal((3, 64), dtype=np.float32)
    packed = numpy_helper.to_array(w)
    got = sess.run(None, {"x": x, w.name: packed})[0]
    np.testing.assert_allclose(got, kernels.lut_matmul(x, qt), rtol=1e-6)
    with pytest.raises(Exception, match=r"W has shape \[\d+\], expected"):
        sess.run(None, {"x": x, w.name: packed[:-1]})


@pytest.mark.parametrize("threads", [1, 2])
def test_products_large_enough_for_threads_equal_the_native_module(threads):
    rng = np.random.default_rng(10)
    qt = quantize(rng.standard_normal((520, 4096), dtype=np.float32), 2, 64)
    sess = runtime.InferenceSession(linear_model(qt), threads=threads)
    for m in (1, 5):
        x = rng.standard_normal((m, 4096), dtype=np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], kernels.lut_matmul(x, qt),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits,symmetric", [(1, True), (2, False), (3, True), (4, False),
                                            ("ternary", True)])
def test_thread_count_does_not_change_the_session_result(bits, symmetric):
    # M=1: each of the pool's threads builds the tables itself (K <= 1536, gemm.h,
    # uses_private_prep); M=32: rows, then tiles. K=1000 ends with a short group of 32,
    # N=400 with a short tile; every width is large enough for the pool (estimated_ns).
    rng = np.random.default_rng(11)
    qt = quantize(rng.standard_normal((400, 1000), dtype=np.float32), bits, 32, symmetric)
    model = linear_model(qt)
    xs = [rng.standard_normal((m, 1000), dtype=np.float32) for m in (1, 32)]
    got = {threads: [runtime.InferenceSession(model, threads=threads).run(None, {"x": x})[0]
                     for x in xs] for threads in (1, 2, 4)}
    for threads in (2, 4):
        for one, many in zip(got[1], got[threads], strict=True):
            np.testing.assert_array_equal(one, many)


def test_alternating_sessions_on_one_thread_keep_their_own_tables():
    # At M=1 a thread keeps the tables it built for the call it is in; two sessions of
    # different K and format called in turn from this thread must never see each other's.
    rng = np.random.default_rng(12)
    cases = []
    for k, bits in ((1000, 2), (520, 4), (1000, "ternary")):
        qt = quantize(rng.standard_normal((400, k), dtype=np.float32), bits, 32)
        x = rng.standard_normal((1, k), dtype=np.float32)
        sess = runtime.InferenceSession(linear_model(qt), threads=2)
        cases.append((sess, x, kernels.lut_matmul(x, qt)))
    for _ in range(3):
        for sess, x, want in cases:
            np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)


def _collapse_available() -> bool:
    """Linux 6.1+ (MADV_COLLAPSE) with transparent huge pages not switched off."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return False
        major, minor = (int(v) for v in platform.release().split(".")[:2])
    except (OSError, ValueError):
        return False
    return (major, minor) >= (6, 1)


def _same_with_and_without_huge_pages(model, x, monkeypatch) -> None:
    """Sessions of `model` with EDGEPET_HUGE_PAGES=0 and without give equal products, at
    M=1 and M=len(x)."""
    monkeypatch.setenv("EDGEPET_HUGE_PAGES", "0")
    plain = runtime.InferenceSession(model, threads=1)
    monkeypatch.delenv("EDGEPET_HUGE_PAGES")
    huge = runtime.InferenceSession(model, threads=1)
    for rows in (x[:1], x):
        np.testing.assert_array_equal(huge.run(None, {"x": rows})[0],
                                      plain.run(None, {"x": rows})[0])


@pytest.mark.parametrize("bits", [4, 2])
def test_weights_in_huge_pages_give_the_same_products(bits, monkeypatch):
    # The op backs an initializer's codes with huge pages at session start, and the dot
    # kernels then stop prefetching them: the products must not change by a bit.
    rng = np.random.default_rng(13)
    qt = quantize(rng.standard_normal((2048, 4096), dtype=np.float32), bits, 64)
    x = rng.standard_normal((3, 4096), dtype=np.float32)
    model = linear_model(qt)
    _same_with_and_without_huge_pages(model, x, monkeypatch)


_GROWTH = """
import numpy as np
from edgepet import runtime
from edgepet.exporters.onnx import linear_model
from edgepet.quant import quantize
def huge():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
model = linear_model(quantize(np.ones((2048, 4096), np.float32), 4, 64)).SerializeToString()
before = huge()
session = runtime.InferenceSession(model, threads=1)
print(huge() - before)
"""


def _in_fresh_process(script: str, setting: str | None, *args: str) -> str:
    """`script`'s output from a new Python process with EDGEPET_HUGE_PAGES=setting (None:
    unset): memory an earlier session of this process freed may already be in huge pages."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEPET_HUGE_PAGES"}
    if setting is not None:
        env["EDGEPET_HUGE_PAGES"] = setting
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.skipif(sys.platform != "linux" or not _collapse_available(),
                    reason="needs Linux 6.1+ with transparent huge pages")
@pytest.mark.parametrize("setting, grows", [(None, True), ("0", False)])
def test_session_start_puts_the_codes_in_huge_pages(setting, grows):
    # In a fresh process (memory an earlier session freed may already be in huge pages):
    # the 4 MB of codes must add huge pages, and EDGEPET_HUGE_PAGES=0 must add none.
    growth = int(_in_fresh_process(_GROWTH, setting).split()[-1])
    assert (growth >= 2 << 20) == grows, growth


def _save_with_external_data(model: onnx.ModelProto, folder) -> str:
    path = str(folder / "model.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return path


@pytest.mark.parametrize("bits, group, symmetric", [(4, 64, True), (4, 32, False), (2, 64, True)])
def test_weights_mapped_from_a_file_give_the_same_products(bits, group, symmetric, tmp_path,
                                                           monkeypatch):
    # A bundle's initializers are mapped from model.onnx.data: the op copies them into huge
    # pages (and the dot kernels ask ahead or not by format): the same products.
    rng = np.random.default_rng(14)
    qt = quantize(rng.standard_normal((1024, 2048), dtype=np.float32), bits, group,
                  symmetric=symmetric)
    path = _save_with_external_data(linear_model(qt), tmp_path)
    x = rng.standard_normal((3, 2048), dtype=np.float32)
    _same_with_and_without_huge_pages(path, x, monkeypatch)


_FILE_GROWTH = """
import sys
import numpy as np
from edgepet import runtime
path = sys.argv[1]
def memory():
    huge = mapped = 0
    name = ""
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's first line: range, ..., path
            name = fields[5] if len(fields) > 5 else ""
        elif fields[0] == "AnonHugePages:":
            huge += int(fields[1]) * 1024
        elif fields[0] == "Rss:" and name == path + ".data":
            mapped += int(fields[1]) * 1024
    return huge, mapped
before = memory()[0]
session = runtime.InferenceSession(path, threads=1)
session.run(None, {"x": np.ones((1, 4096), np.float32)})
huge, mapped = memory()
second = runtime.InferenceSession(path, threads=1)
print(huge - before, mapped, memory()[0] - huge)
"""


def _huge_page_bytes() -> int:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(sys.platform != "linux" or not _collapse_available()
                    or not 0 < _huge_page_bytes() <= 2 << 20,
                    reason="needs Linux 6.1+ with transparent huge pages of 2 MB at most")
@pytest.mark.parametrize("setting, copied", [(None, True), ("0", False)])
def test_weights_mapped_from_a_file_move_to_huge_pages(setting, copied, tmp_path):
    # ONNX Runtime maps an external-data initializer from its file, where huge pages cannot
    # go: the op copies the 4 MB of codes into huge pages and takes the file's pages out of
    # the process (not resident twice), once for every session of that file;
    # EDGEPET_HUGE_PAGES=0 reads them where they lie.
    model = linear_model(quantize(np.ones((2048, 4096), np.float32), 4, 64))
    path = _save_with_external_data(model, tmp_path)
    out = _in_fresh_process(_FILE_GROWTH, setting, path)
    growth, mapped, second = (int(v) for v in out.split()[-3:])
    if copied:
        # A second session of the same file shares the first one's copy.
        assert growth >= 2 << 20 and mapped < 1 << 20 and second < 1 << 20, out
    else:
        assert growth < 2 << 20 and mapped >= 4 << 20, (growth, mapped)


def test_unsupported_bits_names_node():
    msg = _error(_broken(lambda node, *_: _set_attr(node, "bits", 5)), X)
    assert "'layers.3.mlp.up'" in msg and "bits=5 is not supported" in msg


def test_unknown_layout_names_node():
    msg = _error(_broken(lambda node, *_: _set_attr(node, "layout", "tile64")), X)
    assert "layout 'tile64' is not known" in msg


def test_missing_zero_points_names_node():
    def drop(node, inits, inputs):
        inputs[3] = ""

    msg = _error(_broken(drop, symmetric=False), X)
    assert "zero_points are required" in msg


def test_missing_attribute_names_node():
    def drop(node, inits, inputs):
        for a in list(node.attribute):
            if a.name == "group_size":
                node.attribute.remove(a)

    msg = _error(_broken(drop), X)
    assert "missing attribute(s): group_size" in msg


def test_wrong_bias_length_names_node():
    def bad(node, inits, inputs):
        inits.append(numpy_helper.from_array(np.ones(5, np.float32), "b"))
        inputs.extend(["", "b"] if len(inputs) == 3 else ["b"])

    msg = _error(_broken(bad), X)
    assert "bias has shape [5], expected [16]" in msg


def test_bad_group_size_names_node():
    msg = _error(_broken(lambda node, *_: _set_attr(node, "group_size", 48)), X)
    assert "group_size=48 must be a multiple of 32" in msg


def test_model_checker_accepts_exported_models():
    qt = quantize(np.ones((8, 32), np.float32), 2, 32)
    onnx.checker.check_model(linear_model(qt))


@pytest.mark.parametrize("bits", [2, 4])
def test_zero_level_codes_read_as_their_rule_and_not_as_odd_levels(bits):
    """The same codes and scales with and without the zero_level attribute are two weights,
    each the product of its own rule; the attribute is on the node only where set."""
    rng = np.random.default_rng(bits)
    qt = quantize(rng.standard_normal((40, 128), dtype=np.float32), bits, 32, zero_level=True)
    odd = QuantizedTensor(qt.codes, qt.scales, None, bits, 32, True)
    x = rng.standard_normal((3, 128), dtype=np.float32)
    for weight in (qt, odd):
        node, _ = lut_matmul_node(weight, "x", "y", "n")
        assert ("zero_level" in {a.name for a in node.attribute}) == weight.zero_level
        got = runtime.InferenceSession(linear_model(weight)).run(None, {"x": x})[0]
        exact = x @ weight.dequantize().T
        assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 0.015


@pytest.mark.parametrize("bits,symmetric,ternary", [(1, 1, 0), (4, 0, 0), (2, 1, 1)])
def test_zero_level_where_it_means_nothing_names_node(bits, symmetric, ternary):
    def bad(node, inits, inputs):
        _set_attr(node, "bits", bits)
        _set_attr(node, "ternary", ternary)
        node.attribute.append(helper.make_attribute("zero_level", 1))

    msg = _error(_broken(bad, symmetric=bool(symmetric)), X)
    assert "zero_level=1 is for symmetric 2-, 3- and 4-bit codes" in msg, msg
