"""Switchable adapters for decoder bundles: several adapters in one bundle, each giving what
the checkpoint merged with that adapter alone gives; switching never reloads the model and
never lets one adapter's KV cache into another's."""

import json

import numpy as np
import onnx
import pytest
from llm_helpers import write_hf_folder
from onnx import numpy_helper
from test_decoder_adapter import _lora_parts, _merged_checkpoint, _peft_folder

import edgepet
from edgepet.cli import main
from edgepet.exporters.llm import export_decoder
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.generate import open_decoder

IDS = [1, 40, 41, 42, 7, 300 - 1, 13, 14, 15, 99, 3]


@pytest.fixture(scope="module")
def peft(tmp_path_factory, tiny_ck):
    root = tmp_path_factory.mktemp("peft")
    parts = {"a": _lora_parts(tiny_ck, seed=1), "b": _lora_parts(tiny_ck, seed=2)}
    return root, parts, {t: _peft_folder(root / t, p) for t, p in parts.items()}


@pytest.fixture(scope="module")
def switchable(peft, tiny_hf):
    root, _, folders = peft
    return export_decoder(tiny_hf, root / "ab", bits=4, adapters=folders)


@pytest.fixture(scope="module")
def merged(peft, tiny_ck):
    """Each adapter alone, merged into the float checkpoint before export."""
    root, parts, _ = peft
    out = {}
    for task, p in parts.items():
        hf = write_hf_folder(root / f"hf-{task}", _merged_checkpoint(tiny_ck, p))
        out[task] = export_decoder(hf, root / f"merged-{task}", bits=4).path
    return out


def _logits(session, ids=IDS):
    logits, _ = session.forward(ids, None, num_logits=0)
    return logits


def test_only_projections_that_differ_switch_and_the_rest_is_shared(switchable):
    m = switchable.manifest
    assert [a["name"] for a in m["adapters"]] == ["a", "b"]
    switched = {r["name"] for r in m["layers"] if r["switchable"]}
    # the LoRAs adapt q_proj of layer 0, v_proj and down_proj of layer 1: the fused qkv
    # of both layers and layer 1's down projection switch; nothing else
    assert switched == {"layers.0.attn.qkv", "layers.1.attn.qkv", "layers.1.mlp.down"}
    params = set(m["adapters"][1]["parameters"])
    assert params == {f"{node}.{t}" for node in switched
                      for t in ("weight_packed", "scales", "zero_points")}
    assert not {i["name"] for i in m["inputs"]} & params  # not inputs a user feeds
    assert m["sizes"]["adapter_bytes"] == sum(a["bytes"] for a in m["adapters"])
    assert [t["name"] for t in m["provenance"]["adapters"]] == ["a", "b"]
    assert set(m["reference"]["measured"]) == {"a", "b"}
    assert all(r["ok"] for r in m["reference"]["measured"].values())


@pytest.mark.parametrize("task", ["a", "b"])
def test_each_adapter_gives_the_logits_of_the_checkpoint_merged_with_it_alone(
        switchable, merged, task):
    session = edgepet.load(switchable.path)
    session.set_adapter(task)
    alone = open_decoder(merged[task])
    np.testing.assert_allclose(_logits(session), _logits(alone), rtol=0, atol=1e-5)
    # same codes: the adapter file holds exactly the merged bundle's tensors
    reference = {t.name: numpy_helper.to_array(t) for t in onnx.load(
        str(merged[task] / "model.onnx")).graph.initializer}
    import onnxruntime as ort

    entry = next(a for a in switchable.manifest["adapters"] if a["name"] == task)
    values = ort.AdapterFormat.read_adapter(str(switchable.path / entry["file"])
                                            ).get_parameters()
    for name, value in values.items():
        np.testing.assert_array_equal(value.numpy(), reference[name], err_msg=name)


def test_switching_back_and_forth_reloads_nothing_and_repeats_exactly(switchable, merged):
    session = open_decoder(switchable.path)
    assert session.active_adapter == "a"  # the first adapter is the default
    model_session = session._session
    first = {"a": _logits(session)}
    session.set_adapter("b")
    first["b"] = _logits(session)
    assert np.abs(first["a"] - first["b"]).max() > 1e-2  # the adapters do differ
    for task in ("a", "b", "a", "b", None):
        session.set_adapter(task)
        np.testing.assert_array_equal(_logits(session), first[task or "a"])
    assert session._session is model_session
    session.set_adapter("b")
    greedy = session.generate("the", max_new_tokens=6).tokens
    assert greedy == open_decoder(merged["b"]).generate("the", max_new_tokens=6).tokens


def test_a_cache_built_under_one_adapter_is_refused_under_another(switchable):
    session = open_decoder(switchable.path)
    _, cache = session.forward(IDS[:5])
    assert cache.adapter == "a"
    session.set_adapter("b")
    with pytest.raises(BadInputError, match="built under adapter 'a'.*empty cache"):
        session.forward(IDS[5:6], cache)
    session.set_adapter("a")
    logits, _ = session.forward(IDS[5:6], cache)  # back under its own adapter: fine
    np.testing.assert_allclose(logits[-1], _logits(session, IDS[:6])[-1], rtol=0, atol=1e-4)


def test_unknown_adapter_names_are_refused(switchable, tmp_path, capsys):
    session = open_decoder(switchable.path)
    with pytest.raises(BadInputError, match="no adapter 'c' — its adapters: a, b"):
        session.set_adapter("c")
    assert session.active_adapter == "a"
    assert main(["generate", str(switchable.path), "--prompt", "the", "--adapter", "c"]) == 2
    assert "no adapter 'c'" in capsys.readouterr().err
    text = tmp_path / "t.txt"
    text.write_text("the then the")
    assert main(["perplexity", str(switchable.path), "--text", str(text), "--adapter",
                 "c"]) == 2
    assert "its adapters: a, b" in capsys.readouterr().err


def test_cli_generate_and_perplexity_take_the_adapter(switchable, merged, tmp_path, capsys):
    for task in ("a", "b"):
        assert main(["generate", str(switchable.path), "--prompt", "the",
                     "--max-new-tokens", "5", "--adapter", task, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert main(["generate", str(merged[task]), "--prompt", "the", "--max-new-tokens",
                     "5", "--json"]) == 0
        assert got["tokens"] == json.loads(capsys.readouterr().out)["tokens"]
    text = tmp_path / "t.txt"
    text.write_text("the then there at on in the er re " * 8)
    scores = {}
    for task in ("a", "b"):
        assert main(["perplexity", str(switchable.path), "--text", str(text), "--ctx", "16",
                     "--adapter", task, "--json"]) == 0
        scores[task] = json.loads(capsys.readouterr().out)["perplexity"]
        assert main(["perplexity", str(merged[task]), "--text", str(text), "--ctx", "16",
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["perplexity"] == pytest.approx(
            scores[task], rel=1e-5)
    assert scores["a"] != scores["b"]


def test_cli_exports_several_adapters_and_inspect_marks_them(peft, tiny_hf, tmp_path, capsys):
    _, _, folders = peft
    out = tmp_path / "ab"
    assert main(["export", str(tiny_hf), "--adapter", f"a={folders['a']}", "--adapter",
                 f"b={folders['b']}", "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        "a.onnx_adapter", "b.onnx_adapter"]
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "adapters    a (" in shown and "switchable: its parameters come from" in shown
    assert main(["verify", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "verify [a] ok" in shown and "verify [b] ok" in shown


def test_a_kept_float_projection_switches_too(peft, tiny_ck, tiny_hf, tmp_path):
    _, parts, folders = peft
    bundle = export_decoder(tiny_hf, tmp_path / "ab", bits=4, adapters=folders,
                            keep=["layers.0.attn.qkv"])
    assert "layers.0.attn.qkv.weight_t" in bundle.manifest["adapters"][1]["parameters"]
    session = open_decoder(bundle.path, adapter="b")
    hf = write_hf_folder(tmp_path / "hf-b", _merged_checkpoint(tiny_ck, parts["b"]))
    alone = export_decoder(hf, tmp_path / "b", bits=4, keep=["layers.0.attn.qkv"])
    np.testing.assert_allclose(_logits(session), _logits(open_decoder(alone.path)),
                               rtol=0, atol=1e-5)
    assert bundle.manifest["reference"]["measured"]["b"]["ok"]


def test_bad_adapter_names_are_refused_before_anything_is_written(peft, tiny_hf, tmp_path):
    _, _, folders = peft
    with pytest.raises(BadInputError, match="adapter name 'a/b'"):
        export_decoder(tiny_hf, tmp_path / "x", adapters={"a/b": folders["a"],
                                                           "c": folders["b"]})
    assert not (tmp_path / "x").exists()
