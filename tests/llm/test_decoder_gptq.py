"""Calibrated (GPTQ) decoder exports: the forward it calibrates on, the bundle, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from edgepet.cli import main
from edgepet.exporters.llm import calibrate, export_decoder
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.export import _tokenizer, auto_quantizer
from edgepet.exporters.rewrite import dequantized_twin
from edgepet.runtime import InferenceSession
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.generate import open_decoder

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")


def graph_logits(ck, ids):
    """Logits of the fp32 ONNX decoder graph for one window ``ids``."""
    model = llm_graph.build_decoder(ck, llm_graph.float_weights(ck), 64, np.float32,
                                    kv_dtype=np.float32)
    session = InferenceSession(model)
    return session.run(["logits"], llm_graph.prefill_feeds(ck.config, ids,
                                                          kv_dtype=np.float32))[0][0]


def test_the_calibration_forward_matches_the_fp32_graph(tiny_ck):
    windows = [list(range(3, 40)), list(range(100, 121))]
    seen = []

    def float_weight(name, x):
        seen.append((name, x.shape))
        return llm_graph.projections(tiny_ck.config)[[p.name for p in llm_graph.projections(
            tiny_ck.config)].index(name)].weight(tiny_ck)

    hidden = calibrate.forward(tiny_ck, windows, float_weight)
    logits = hidden @ tiny_ck.head.T
    start = 0
    for window in windows:
        expected = graph_logits(tiny_ck, window)
        np.testing.assert_allclose(logits[start:start + len(window)], expected, rtol=2e-4,
                                   atol=2e-4)
        start += len(window)
    assert [name for name, _ in seen] == [p.name for p in llm_graph.projections(
        tiny_ck.config)]
    assert seen[2] == ("layers.0.mlp.gate_up", (58, tiny_ck.config.hidden_size))
    assert seen[3] == ("layers.0.mlp.down", (58, tiny_ck.config.intermediate_size))


def test_the_default_calibration_text_is_offline_and_disjoint_from_the_evaluation_text():
    from pydoc_data.topics import topics

    text = calibrate.default_text()
    evaluation = "\n\n".join(topics[k] for k in sorted(topics))

    def shingles(s, n=8):
        words = re.findall(r"\w+", s.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    ours = shingles(text)
    assert len(text) > 100_000
    assert len(ours & shingles(evaluation)) / len(ours) < 1e-3
    assert calibrate.default_text() == text  # deterministic


def test_calibration_windows_are_evenly_spaced_and_counted(tiny_ck):
    data = calibrate.calibration_windows(_tokenizer(tiny_ck), None, 1200, ctx=512)
    assert [len(w) for w in data.windows] == [512, 512, 176]
    assert data.tokens == 1200 == data.record["tokens"]
    assert data.record["source"] == "python-stdlib-docstrings"
    assert data.record["text_tokens"] > 10 * 1200


def test_auto_is_gptq_below_4_bits_and_calibration_needs_gptq():
    assert auto_quantizer("auto", 2) == "gptq"
    assert auto_quantizer("auto", 3) == "gptq"
    assert auto_quantizer("auto", 4) == "rtn"
    assert auto_quantizer("auto", 4, calibration="x.txt") == "gptq"
    with pytest.raises(BadInputError, match="feed --quantizer gptq"):
        auto_quantizer("rtn", 2, calibration_tokens=512)
    assert auto_quantizer("auto", 2, adapters=2) == "gptq"  # each adapter calibrated


def test_a_shared_head_is_not_calibrated(tmp_path, tiny_gguf):
    bundle = export_decoder(tiny_gguf, tmp_path / "b", bits=2, quantizer="gptq",
                            tied_head="shared", calibration_tokens=256, max_context=48)
    layers = {layer["name"]: layer for layer in bundle.manifest["layers"]}
    assert "calibration_error" in layers["layers.0.mlp.gate_up"]
    assert "calibration_error" not in layers["lm_head"]


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(calibrate.default_text()[:20_000])
    return path


@pytest.fixture(scope="module")
def gptq_bundle(tmp_path_factory, tiny_gguf, calibration_file):
    out = tmp_path_factory.mktemp("bundles") / "gptq2"
    export_decoder(tiny_gguf, out, bits=2, group_size=32, quantizer="gptq", max_context=48,
                   layer_bits={"layers.*.attn.*": 4}, calibration=calibration_file,
                   calibration_tokens=600)
    return out


def test_a_gptq_bundle_round_trips_and_says_what_calibrated_it(gptq_bundle, calibration_file):
    session = open_decoder(gptq_bundle)
    manifest = session.bundle.manifest
    q = manifest["quantization"]
    assert q["quantizer"] == "gptq"
    record = q["calibration"]
    assert record["method"] == "gptq" and record["source"] == "file"
    assert record["file"] == calibration_file.name and record["tokens"] == 600
    bits = {layer["name"]: layer["bits"] for layer in manifest["layers"]}
    assert bits["layers.0.attn.qkv"] == 4 and bits["layers.0.mlp.gate_up"] == 2
    assert all(layer["calibration_error"] >= 0 for layer in manifest["layers"])
    results = session.bundle.verify()
    assert all(r.ok for r in results)
    result = session.generate("the cat", max_new_tokens=4)
    assert 1 <= result.generated_tokens <= 4


def test_a_gptq_bundle_stores_the_codes_gptq_made(gptq_bundle, tiny_ck, calibration_file):
    """The bundle's dequantized twin (what the quality tools run) is GPTQ's own result:
    re-running the calibration gives the same codes, and the twin's outputs are the
    reference outputs the bundle carries."""
    data = calibrate.calibration_windows(_tokenizer(tiny_ck), calibration_file, 600)

    def choose(proj):
        bits = 4 if ".attn." in proj.name else 2
        return calibrate.Choice(bits, 32, False)

    result = calibrate.gptq_checkpoint(tiny_ck, choose, data)
    assert len(result.rtn_kept) < len(result.tensors)  # GPTQ made most of them
    bundle = open_decoder(gptq_bundle).bundle
    import onnx

    model = onnx.load(str(bundle.path / "model.onnx"))
    twin = dequantized_twin(model, {n: (qt, None) for n, qt in result.tensors.items()})
    feeds = bundle.reference_inputs()
    session = InferenceSession(twin)
    logits = session.run(["logits"], feeds)[0]
    expected = np.load(bundle.path / "reference" / "quantized_outputs.npz")["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_sequential_and_one_pass_gptq_both_beat_rtn_on_the_tiny_model(tiny_ck):
    data = calibrate.calibration_windows(_tokenizer(tiny_ck), None, 512)

    def choose(proj):
        return calibrate.Choice(2, 32, False)

    for sequential in (True, False):
        result = calibrate.gptq_checkpoint(tiny_ck, choose, data, sequential=sequential)
        gptq = np.mean(list(result.errors.values()))
        rtn = np.mean(list(result.rtn_errors.values()))
        assert gptq < 0.8 * rtn


@pytest.mark.parametrize("extra", [
    ["--calibration", "{missing}"],
    ["--calibration", "{short}"],
    ["--calibration-tokens", "10"],
    ["--quantizer", "rtn", "--calibration-tokens", "512"],
])
def test_bad_calibration_exits_2_and_writes_nothing(tmp_path, tiny_gguf, capsys, extra):
    short = tmp_path / "short.txt"
    short.write_text("too short to calibrate on")
    extra = [e.format(missing=tmp_path / "nope.txt", short=short) for e in extra]
    out = tmp_path / "out"
    argv = ["export", str(tiny_gguf), "--bits", "2", "--quantizer", "gptq", *extra,
            "-o", str(out), "--quiet"]
    assert main(argv) == 2
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    message = capsys.readouterr().err
    assert "calibrat" in message


def test_cli_export_with_gptq_prints_progress_per_layer(tmp_path, tiny_gguf, capsys):
    out = tmp_path / "b"
    assert main(["export", str(tiny_gguf), "--bits", "2", "--quantizer", "gptq",
                 "--calibration-tokens", "256", "-o", str(out)]) == 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "layer 1/2 quantized" in text and "layer 2/2 quantized" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["calibration"]["tokens"] == 256


def test_gptq_is_refused_for_models_that_are_not_decoders(tmp_path, capsys):
    assert main(["export", "--example", "mlp", "--quantizer", "gptq", "-o",
                 str(tmp_path / "x"), "--quiet"]) == 2
    assert "decoder" in capsys.readouterr().err
