"""Importing Hugging Face PEFT adapters (LoRA, rsLoRA, MiSS/Bone) without peft."""

import json

import pytest
import torch
from pet_helpers import assert_unchanged, snapshot
from safetensors.torch import save_file

from edgepet import pet
from edgepet.pet import PetError


def write_peft(folder, config, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def lora_tensors(r=4, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    return {
        "base_model.model.inp.lora_A.weight": torch.randn(r, 12, generator=gen),
        "base_model.model.inp.lora_B.weight": torch.randn(32, r, generator=gen),
        "base_model.model.hidden.lora_A.weight": torch.randn(r, 32, generator=gen),
        "base_model.model.hidden.lora_B.weight": torch.randn(48, r, generator=gen),
    }


LORA_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["inp", "hidden"]}


def test_peft_lora_gives_w_plus_alpha_over_r_times_b_a(tiny, tmp_path):
    tensors = lora_tensors()
    report = pet.load_peft(tiny, write_peft(tmp_path / "a", LORA_CONFIG, tensors))
    assert report.layers == ["inp", "hidden"]
    a = tensors["base_model.model.inp.lora_A.weight"]
    b = tensors["base_model.model.inp.lora_B.weight"]
    assert torch.allclose(tiny.inp.delta_weight(), 2.0 * b @ a)
    assert not tiny.inp.base.weight.requires_grad


def test_peft_rslora_and_alpha_pattern_set_each_layers_scale(tiny, tmp_path):
    config = {**LORA_CONFIG, "use_rslora": True, "alpha_pattern": {"hidden": 2}}
    pet.load_peft(tiny, write_peft(tmp_path / "a", config, lora_tensors()))
    assert tiny.inp.config.scale == pytest.approx(8 / 2)  # alpha / sqrt(r)
    assert tiny.hidden.config.scale == pytest.approx(2 / 2)


def test_peft_miss_row_shard_block_is_used_as_bone(tiny, tmp_path):
    block = torch.randn(4, 32)
    config = {"peft_type": "MISS", "r": 4, "init_weights": True, "target_modules": ["inp"]}
    folder = write_peft(tmp_path / "m", config, {"base_model.model.inp.miss_block": block})
    pet.load_peft(tiny, folder)
    assert isinstance(tiny.inp, pet.BoneLinear)
    assert torch.equal(tiny.inp.delta_weight()[:, 5], block[1])


def test_peft_miss_mini_block_is_repeated_along_the_output(tiny, tmp_path):
    block = torch.randn(4, 8)
    config = {"peft_type": "MISS", "r": 4, "init_weights": "mini", "mini_r": 8}
    folder = write_peft(tmp_path / "m", config, {"base_model.model.inp.miss_block": block})
    pet.load_peft(tiny, folder)
    assert torch.equal(tiny.inp.bone_block.detach(), block.repeat(1, 4))


def test_peft_bone_bat_block_is_used_as_bone_bat(tiny, tmp_path):
    block = torch.randn(48 // 8, 8, 8) * 0.1
    config = {"peft_type": "BONE", "r": 8, "init_weights": "bat"}
    folder = write_peft(tmp_path / "b", config, {"base_model.model.hidden.bone_block": block})
    pet.load_peft(tiny, folder)
    assert isinstance(tiny.hidden, pet.BoneBatLinear)
    assert torch.equal(tiny.hidden.bone_block.detach(), block)


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_missing_peft_files_are_named(tiny, tmp_path, missing):
    folder = write_peft(tmp_path / "a", LORA_CONFIG, lora_tensors())
    (folder / missing).unlink()
    with pytest.raises(PetError, match=f"has no {missing}"):
        pet.load_peft(tiny, folder)


def test_unsupported_peft_type_is_refused(tiny, tmp_path):
    folder = write_peft(tmp_path / "a", {**LORA_CONFIG, "peft_type": "IA3"}, lora_tensors())
    with pytest.raises(PetError, match="peft_type 'IA3' is not supported.*LORA"):
        pet.load_peft(tiny, folder)


def test_dora_is_refused(tiny, tmp_path):
    folder = write_peft(tmp_path / "a", {**LORA_CONFIG, "use_dora": True}, lora_tensors())
    with pytest.raises(PetError, match="DoRA"):
        pet.load_peft(tiny, folder)


def test_a_key_naming_no_layer_of_the_model_leaves_it_unchanged(tiny, tmp_path):
    tensors = lora_tensors()
    tensors["base_model.model.decoder.q_proj.lora_A.weight"] = torch.zeros(4, 12)
    tensors["base_model.model.decoder.q_proj.lora_B.weight"] = torch.zeros(32, 4)
    before = snapshot(tiny)
    with pytest.raises(PetError, match="module 'decoder.q_proj', which is not a linear layer"):
        pet.load_peft(tiny, write_peft(tmp_path / "a", LORA_CONFIG, tensors))
    assert_unchanged(tiny, before)


def test_a_shape_mismatch_names_the_layer_and_leaves_the_model_unchanged(tiny, tmp_path):
    tensors = lora_tensors()
    tensors["base_model.model.hidden.lora_B.weight"] = torch.zeros(40, 4)
    before = snapshot(tiny)
    with pytest.raises(PetError, match=r"'hidden': lora_B.weight has shape \[40, 4\]"):
        pet.load_peft(tiny, write_peft(tmp_path / "a", LORA_CONFIG, tensors))
    assert_unchanged(tiny, before)


def test_tensors_it_cannot_read_are_named(tiny, tmp_path):
    tensors = {**lora_tensors(), "base_model.model.inp.lora_magnitude_vector": torch.ones(32)}
    with pytest.raises(PetError, match="lora_magnitude_vector.*DoRA"):
        pet.load_peft(tiny, write_peft(tmp_path / "a", LORA_CONFIG, tensors))
