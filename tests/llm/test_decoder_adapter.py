"""Decoder adapters and quantized embeddings: one adapter merges before quantization (several
switch: test_decoder_switchable.py), and the embedding table can be stored as 4- or 8-bit
codes."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from llm_helpers import write_hf_folder
from onnx import numpy_helper
from torch import nn

from edgepet import pet
from edgepet.cli import main
from edgepet.exporters.llm import export_decoder
from edgepet.runtime.errors import BadInputError

ADAPTED = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
           "model.layers.1.mlp.down_proj"]
RANK, ALPHA = 4, 8.0


def _lora_parts(ck, seed=1):
    rng = np.random.default_rng(seed)
    parts = {}
    for module in ADAPTED:
        n, k = ck.weights[module + ".weight"].shape
        parts[module] = (rng.standard_normal((RANK, k)).astype(np.float32) / np.sqrt(k),
                         rng.standard_normal((n, RANK)).astype(np.float32) * 0.3)
    return parts


def _peft_folder(path, parts):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA,
         "target_modules": sorted({m.rsplit(".", 1)[1] for m in parts})}))
    tensors = {}
    for module, (a, b) in parts.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def _merged_checkpoint(ck, parts):
    weights = dict(ck.weights)
    for module, (a, b) in parts.items():
        weights[module + ".weight"] = weights[module + ".weight"] + (ALPHA / RANK) * (b @ a)
    return dataclasses.replace(ck, weights=weights)


def _initializers(bundle):
    model = onnx.load(str(bundle / "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same_weights(a, b):
    wa, wb = _initializers(a), _initializers(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=0, atol=1e-6, err_msg=name)


def test_a_peft_lora_merged_at_export_equals_exporting_the_merged_model(tmp_path, tiny_ck,
                                                                         tiny_hf, capsys):
    parts = _lora_parts(tiny_ck)
    adapter = _peft_folder(tmp_path / "lora", parts)
    merged_hf = write_hf_folder(tmp_path / "merged", _merged_checkpoint(tiny_ck, parts))
    with_adapter, merged = tmp_path / "with-adapter", tmp_path / "merged-bundle"
    assert main(["export", str(tiny_hf), "--bits", "4", "--adapter", f"chat={adapter}",
                 "-o", str(with_adapter), "--quiet"]) == 0
    assert main(["export", str(merged_hf), "--bits", "4", "-o", str(merged), "--quiet"]) == 0
    _assert_same_weights(with_adapter, merged)
    manifest = json.loads((with_adapter / "manifest.json").read_text())
    record = manifest["provenance"]["adapter"]
    assert record["name"] == "chat" and record["merged"] is True
    assert sorted(record["layers"]) == sorted(ADAPTED)


def test_an_edgepet_pet_lora_model_merges_into_the_decoder(tmp_path, tiny_ck):
    parts = _lora_parts(tiny_ck, seed=2)
    model = nn.Module()  # a model with Hugging Face Llama module names, as PEFT sees them
    for name, w in tiny_ck.weights.items():
        if w.ndim == 2 and name != "model.embed_tokens.weight":
            parent = model
            *path, leaf = name.removesuffix(".weight").split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
            linear.weight.data = torch.from_numpy(w.copy())
            parent.add_module(leaf, linear)
    pet.apply(model, "lora", target_modules=ADAPTED, r=RANK, alpha=ALPHA)
    with torch.no_grad():
        for module, (a, b) in parts.items():
            layer = model.get_submodule(module)
            layer.lora_A.weight.copy_(torch.from_numpy(a))
            layer.lora_B.weight.copy_(torch.from_numpy(b))
    base = write_hf_folder(tmp_path / "base", tiny_ck)
    merged = write_hf_folder(tmp_path / "merged", _merged_checkpoint(tiny_ck, parts))
    a = export_decoder(base, tmp_path / "a", bits=3, adapters={"task": model})
    b = export_decoder(merged, tmp_path / "b", bits=3)
    _assert_same_weights(a.path, b.path)


def test_a_bad_adapter_exits_2_and_writes_nothing(tmp_path, tiny_ck, tiny_hf, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tiny_hf), "--adapter", str(tmp_path / "missing"), "-o",
                 str(out), "--quiet"]) == 2
    assert "PEFT folder" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    _peft_folder(wrong, {"model.layers.0.self_attn.q_proj": (
        np.zeros((RANK, 7), np.float32), np.zeros((256, RANK), np.float32))})
    assert main(["export", str(tiny_hf), "--adapter", str(wrong), "-o", str(out),
                 "--quiet"]) == 2
    assert "different model" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("bits", [4, 8])
def test_the_embedding_table_can_be_stored_as_codes(tmp_path, tiny_gguf, bits):
    bundle = export_decoder(tiny_gguf, tmp_path / "b", bits=4, embedding=bits)
    model = onnx.load(str(bundle.path / "model.onnx"), load_external_data=False)
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1 and gathers[0].domain == "com.microsoft"
    assert not any(n.op_type == "Gather" for n in model.graph.node)
    head = [n for n in model.graph.node if n.name == "lm_head"]
    assert [n.op_type for n in head] == ["LutMatMul"]  # unless --tied-head shared
    embeddings = bundle.manifest["quantization"]["embeddings"]
    assert embeddings["bits"] == bits and embeddings["block_size"] == 32
    table = embeddings["tables"][0]
    assert table["stored_bytes"] < table["float_bytes"] * (bits + 2) / 32
    assert bundle.manifest["reference"]["measured"]["default"]["ok"]


def test_embedding_storage_names_are_checked(tmp_path, tiny_gguf):
    with pytest.raises(BadInputError, match="embedding storage 3"):
        export_decoder(tiny_gguf, tmp_path / "b", embedding=3)


def test_cli_embedding_bits_reach_decoders(tmp_path, tiny_hf):
    for flag, op in (("8", "GatherBlockQuantized"), ("float", "Gather")):
        out = tmp_path / flag
        assert main(["export", str(tiny_hf), "--embedding-bits", flag, "-o", str(out),
                     "--quiet"]) == 0
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        assert [n.op_type for n in model.graph.node if n.name == "embed"] == [op]


def test_encoder_only_options_are_refused_for_decoders(tmp_path, tiny_hf, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tiny_hf), "--budget-error", "0.01", "--input-shape", "1,8",
                 "-o", str(out), "--quiet"]) == 2
    assert "take no --input-shape, --budget-error" in capsys.readouterr().err
    assert main(["export", str(tiny_hf), "--target", "no-such-board", "-o", str(out),
                 "--quiet"]) == 2
    assert "no-such-board" in capsys.readouterr().err
    assert not out.exists()
