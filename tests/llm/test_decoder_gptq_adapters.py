"""GPTQ with several switchable adapters: the shared projections are calibrated once (under
the first adapter), each adapter's switchable projections with its own forward; every
adapter's logits through the bundle come closer to its float model than rounding's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from llm_helpers import torch_logits
from test_decoder_adapter import _lora_parts, _merged_checkpoint, _peft_folder

from edgepet.exporters.llm import export_decoder
from edgepet.exporters.llm.export import _tokenizer, auto_quantizer
from edgepet.runtime.generate import open_decoder

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

TEXT = ("the cat sat on the mat and then the dog ran in the garden; there the rain fell on "
        "the tree and the river ran on to the sea")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, tiny_ck):
    root = tmp_path_factory.mktemp("peft")
    parts = {"a": _lora_parts(tiny_ck, seed=1), "b": _lora_parts(tiny_ck, seed=2)}
    folders = {t: _peft_folder(root / t, p) for t, p in parts.items()}
    return root, parts, folders


@pytest.fixture(scope="module")
def bundles(tasks, tiny_gguf):
    root, _, folders = tasks
    out = {}
    for quantizer in ("auto", "rtn"):
        tokens = {"calibration_tokens": 1024} if quantizer == "auto" else {}
        out[quantizer] = export_decoder(tiny_gguf, root / quantizer, bits=2, layer_bits={},
                                        quantizer=quantizer, adapters=folders,
                                        **tokens)
    return out


def _relative_error(logits, reference):
    return float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))


def test_auto_calibrates_below_4_bits_with_several_adapters_too(bundles):
    assert auto_quantizer("auto", 2, adapters=2) == "gptq"
    assert auto_quantizer("gptq", 2, adapters=3) == "gptq"
    assert bundles["auto"].manifest["quantization"]["quantizer"] == "gptq"


@pytest.mark.parametrize("task", ["a", "b"])
def test_each_adapter_is_closer_to_its_float_model_than_rounding(bundles, tasks, tiny_ck,
                                                                  task):
    _, parts, _ = tasks
    ids = _tokenizer(tiny_ck).encode(TEXT).ids
    reference = torch_logits(_merged_checkpoint(tiny_ck, parts[task]), ids)
    errors = {}
    for quantizer, bundle in bundles.items():
        session = open_decoder(bundle.path)
        session.set_adapter(task)
        logits, _ = session.forward(ids, None, num_logits=0)
        errors[quantizer] = _relative_error(logits, reference)
    # measured: a 0.68 against 1.05, b 0.82 against 1.03 (b, second, runs on the shared
    # projections calibrated under a; as the first adapter it reaches 0.71)
    assert errors["auto"] < 0.9 * errors["rtn"], errors


def test_the_manifest_records_the_calibration_of_each_adapter(bundles):
    m = bundles["auto"].manifest
    switched = sorted(r["name"] for r in m["layers"] if r["switchable"])
    assert switched
    calibration = m["quantization"]["calibration"]
    assert calibration["shared_projections_under"] == "a"
    records = calibration["adapters"]
    assert set(records) == {"a", "b"}
    for record in records.values():
        assert record["method"] == "gptq"
        assert sorted(record["errors"]) == switched
        assert all(record["errors"][n] <= record["rtn_errors"][n] for n in switched)
        assert any(record["errors"][n] < record["rtn_errors"][n] for n in switched)
    # b was calibrated on its own inputs, not a's
    assert records["a"]["errors"] != records["b"]["errors"]
    assert all(r["ok"] for r in m["reference"]["measured"].values())


def test_the_second_adapter_file_holds_its_own_calibrated_codes(bundles):
    """b's switchable tensors differ from rounding's codes of the same (merged) weights."""
    def parameters(bundle, task):
        entry = next(a for a in bundle.manifest["adapters"] if a["name"] == task)
        adapter = ort.AdapterFormat.read_adapter(str(bundle.path / entry["file"]))
        # copies while the adapter lives: its arrays are views of the adapter's buffers
        return {name: value.numpy().copy() for name, value in
                adapter.get_parameters().items()}

    gptq, rtn = parameters(bundles["auto"], "b"), parameters(bundles["rtn"], "b")
    assert set(gptq) == set(rtn)
    codes = [n for n in gptq if n.endswith("weight_packed")]
    assert codes and any(not np.array_equal(gptq[n], rtn[n]) for n in codes)
