"""Hugging Face encoders in: real input names, dynamic named axes, named outputs, tasks,
the tokenizer in the bundle, text on the device, and bad input that says what to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import edgepet
from edgepet.runtime.bundle import Bundle
from edgepet.runtime.text import TextEncoder


@pytest.fixture(scope="module")
def feature_bundle(bert_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "features"
    return edgepet.export(str(bert_folder), out, task="feature-extraction", bits=4)


def test_inputs_keep_their_names_and_batch_and_sequence_are_dynamic(feature_bundle):
    m = feature_bundle.manifest
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == ["batch", "sequence"] for i in m["inputs"])
    assert [o["name"] for o in m["outputs"]] == ["last_hidden_state", "pooler_output"]
    assert m["outputs"][0]["shape"] == ["batch", "sequence", 64]
    assert m["text"]["tokenizer"] == "tokenizer.json" and "tokenizer.json" in m["files"]
    assert m["reference"]["inputs_kind"] == "sample-text"


def test_any_batch_and_sequence_length_runs_and_matches_pytorch(feature_bundle, bert_folder):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(bert_folder)).eval()
    session = feature_bundle.session()
    for batch, seq in [(1, 5), (3, 23)]:
        ids = torch.randint(5, 40, (batch, seq))
        mask = torch.ones_like(ids)
        mask[0, seq // 2:] = 0  # padding must change the result: the mask is really used
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                 "token_type_ids": np.zeros_like(ids.numpy())}
        got = session.run(feeds)["last_hidden_state"]
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        assert got.shape == (batch, seq, 64)
        cos = np.sum(got * want, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(
            want, axis=-1))
        assert cos.mean() > 0.9


def test_sentence_embedding_has_pooling_and_normalization_in_the_graph(bert_folder,
                                                                      tmp_path, cli):
    bundle = edgepet.export(str(bert_folder), tmp_path / "emb", task="sentence-embedding")
    assert [o["name"] for o in bundle.manifest["outputs"]] == ["sentence_embedding"]
    assert bundle.manifest["text"]["pooling"] == "mean"
    assert bundle.manifest["reference"]["metrics"]["kind"] == "embedding"
    code, out, _ = cli("run", tmp_path / "emb", "--text", "the cat sat on the mat",
                       "--text", "a red bus", "--output", tmp_path / "y.npz")
    assert code == 0, out
    y = np.load(tmp_path / "y.npz")["sentence_embedding"]
    assert y.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-4)
    # the same texts through the tokenizer in the bundle and the runtime's encoder
    feeds = TextEncoder.from_bundle(bundle).encode(["the cat sat on the mat", "a red bus"])
    np.testing.assert_allclose(bundle.session().run(feeds)["sentence_embedding"], y,
                               atol=1e-5)


def test_text_file_gives_one_row_per_line(feature_bundle, tmp_path, cli):
    (tmp_path / "t.txt").write_text("the dog\n\nthe old river was green\nrain\n")
    code, out, err = cli("run", feature_bundle.path, "--text-file", tmp_path / "t.txt",
                         "--output", tmp_path / "y.npz")
    assert code == 0, err
    assert np.load(tmp_path / "y.npz")["pooler_output"].shape == (3, 64)


def test_text_classification_gives_logits_and_labels(classifier_folder, tmp_path):
    bundle = edgepet.export(str(classifier_folder), tmp_path / "cls")
    m = bundle.manifest
    assert m["text"]["task"] == "text-classification"
    assert [o["name"] for o in m["outputs"]] == ["logits"]
    assert m["text"]["labels"] == {"0": "neg", "1": "neutral", "2": "pos"}
    # 32 sample sentences: top-1 agreement and KL mean something, and are measured
    measured = m["reference"]["measured"]["default"]
    assert set(measured["metrics"]) == {"top1_agreement", "kl_mean"}


def test_a_transformers_object_keeps_attention_mask(bert_folder, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(bert_folder))
    bundle = edgepet.export(model, tmp_path / "obj", keep=["*.intermediate.*"])
    assert [i["name"] for i in bundle.manifest["inputs"]] == [
        "input_ids", "attention_mask", "token_type_ids"]
    assert bundle.manifest["provenance"]["source_kind"] == "transformers"
    assert bundle.manifest["text"]["tokenizer"] == "tokenizer.json"  # from its own folder


def test_a_bundle_beyond_its_tolerance_is_refused_and_nothing_is_written(
        bert_folder, tmp_path, monkeypatch, cli, no_partial_output):
    from edgepet.exporters import pipeline

    monkeypatch.setitem(pipeline.MIN_EMBEDDING_COSINE, 4, 1.01)
    out = tmp_path / "strict"
    with pytest.raises(pipeline.InaccurateBundleError, match="cosine mean"):
        edgepet.export(str(bert_folder), out, task="sentence-embedding", bits=4)
    assert no_partial_output(out)
    code, _, err = cli("export", bert_folder, "--task", "sentence-embedding", "--bits", "4",
                       "-o", out, "--quiet", "--allow-inaccurate")
    assert code == 0, err
    assert not Bundle.open(out).manifest["reference"]["measured"]["default"]["ok"]
    assert cli("verify", out)[0] == 3


def test_calibration_text_becomes_the_reference(bert_folder, tmp_path):
    (tmp_path / "cal.txt").write_text("\n".join(["the cat", "the dog was late",
                                                 "green tea", "a big city"] * 3))
    bundle = edgepet.export(str(bert_folder), tmp_path / "cal", calibration=tmp_path / "cal.txt",
                            task="sentence-embedding")
    assert bundle.manifest["reference"]["inputs_kind"] == "calibration"
    assert bundle.manifest["reference"]["samples"] == 12


# --- bad input ---------------------------------------------------------------------------


def test_missing_tokenizer_is_bad_input(bert_folder, tmp_path, cli, no_partial_output):
    folder = tmp_path / "no-tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert_folder / name, folder / name)
    out = tmp_path / "o"
    code, _, err = cli("export", folder, "-o", out, "--quiet")
    assert code == 2 and "no tokenizer" in err and "save_pretrained" in err
    assert no_partial_output(out)


def test_decoder_and_unknown_architectures_are_bad_input(tmp_path, cli):
    for model_type, words in [("llama", "decoder"), ("whisper", "encoders")]:
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        code, _, err = cli("export", folder, "-o", tmp_path / f"o-{model_type}", "--quiet")
        assert code == 2 and words in err and "bert" in err


def test_a_remote_only_name_is_bad_input_that_says_what_to_do(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    code, _, err = cli("export", "--hf", "someone/not-here", "-o", tmp_path / "o")
    assert code == 2
    assert "never downloads" in err and "huggingface-cli download someone/not-here" in err


def test_task_on_a_plain_model_file_is_bad_input(tmp_path, cli):
    code, _, err = cli("export", "--example", "mlp", "--task", "sentence-embedding",
                       "-o", tmp_path / "o")
    assert code == 2 and "Hugging Face" in err
