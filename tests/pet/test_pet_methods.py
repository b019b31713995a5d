"""edgepet.pet: applying methods, merging exactly, refusing bad input cleanly."""

import math
import warnings

import pytest
import torch
from pet_helpers import assert_unchanged, randomize_pet, snapshot
from torch import nn

from edgepet import pet
from edgepet.pet import NotMergeable, PetError

MERGEABLE = [
    ("lora", {"r": 4, "alpha": 8}),
    ("lora", {"r": 4, "alpha": 8, "rslora": True}),
    ("lora", {"r": 4, "bits": 1}),
    ("bone", {"r": 5}),  # 5 divides neither 12 nor 32: padded tail
    ("bone-bat", {"r": 4}),
    ("adapter", {"r": 4, "activation": "identity", "bias": False}),
]


@pytest.mark.parametrize(
    ("method", "config"),
    [*MERGEABLE, ("adapter", {"r": 4}), ("gating", {"r": 4, "granularity": "large"})],
)
def test_every_method_starts_as_the_base_model(tiny, x, method, config):
    before = tiny(x)
    pet.apply(tiny, method, **config)
    assert torch.allclose(tiny(x), before, atol=1e-6)


@pytest.mark.parametrize(("method", "config"), MERGEABLE)
def test_merged_model_computes_what_the_adapted_model_computed(tiny, x, method, config):
    pet.apply(tiny, method, **config)
    randomize_pet(tiny)
    adapted = tiny(x)
    report = pet.merge(tiny)
    assert report.layers == ["inp", "hidden"] and not report.not_mergeable
    assert all(layer.merged for layer in pet.pet_layers(tiny).values())
    assert torch.allclose(tiny(x), adapted, atol=1e-5)


@pytest.mark.parametrize(("method", "config"), MERGEABLE)
def test_unmerge_restores_the_base_weights(tiny, x, method, config):
    pet.apply(tiny, method, **config)
    randomize_pet(tiny)
    base = {n: layer.base.weight.detach().clone() for n, layer in pet.pet_layers(tiny).items()}
    adapted = tiny(x)
    pet.merge(tiny)
    pet.unmerge(tiny)
    for n, layer in pet.pet_layers(tiny).items():
        assert not layer.merged
        assert torch.allclose(layer.base.weight, base[n], atol=1e-6)
    assert torch.allclose(tiny(x), adapted, atol=1e-5)


def test_lora_scale_is_alpha_over_r_or_over_sqrt_r_with_rslora(tiny):
    pet.apply(tiny, "lora", ["inp"], r=4, alpha=8)
    layer = tiny.inp
    randomize_pet(tiny)
    expected = 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    assert torch.allclose(layer.delta_weight(), expected)
    assert pet.LoraConfig(r=4, alpha=8, rslora=True).scale == pytest.approx(8 / math.sqrt(4))


def test_bone_row_shard_update_tiles_its_block_along_the_input(tiny):
    pet.apply(tiny, "bone", ["inp"], r=5)
    layer = tiny.inp
    randomize_pet(tiny)
    delta = layer.delta_weight()
    block = layer.bone_block.detach()
    assert delta.shape == (32, 12)
    for j in range(12):
        assert torch.equal(delta[:, j], block[j % 5])


def test_bone_block_affine_merge_is_exact(tiny):
    pet.apply(tiny, "bone-bat", ["hidden"], r=8)
    layer = tiny.hidden
    randomize_pet(tiny)
    w = layer.base.weight.detach().clone()
    b = layer.bone_block.detach()
    expected = torch.empty_like(w)
    eye = torch.eye(8)
    for i in range(48 // 8):
        for j in range(32 // 8):
            block = w[8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
            expected[8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = block @ (eye + b[i]) + b[i]
    pet.merge(tiny)
    assert torch.allclose(layer.base.weight, expected, atol=1e-6)


def test_bone_bat_refuses_a_block_size_that_does_not_divide_the_layer():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 12), nn.Linear(12, 3))
    before = snapshot(model)
    with pytest.raises(PetError, match=r"layer '1'.*r=8, got in=16, out=12"):
        pet.apply(model, "bone-bat", r=8)  # fits layer '0' but not layer '1'
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("method", "config", "reason"),
    [
        ("adapter", {"r": 4}, "relu activation"),
        ("adapter", {"r": 4, "activation": "identity"}, "biases"),
        ("gating", {"r": 4, "granularity": "middle-channel"}, "gate"),
    ],
)
def test_layers_that_cannot_merge_say_why_and_stay_modules(tiny, x, method, config, reason):
    pet.apply(tiny, method, **config)
    randomize_pet(tiny)
    adapted = tiny(x)
    with pytest.raises(NotMergeable, match=reason):
        tiny.inp.delta_weight()
    with pytest.warns(UserWarning, match="cannot merge and stay modules"):
        report = pet.merge(tiny)
    assert report.layers == [] and set(report.not_mergeable) == {"inp", "hidden"}
    assert isinstance(tiny.inp, pet.PetLayer) and not tiny.inp.merged
    assert torch.equal(tiny(x), adapted)


@pytest.mark.parametrize(
    ("granularity", "gate_shape"),
    [("large", (6, 3, 32)), ("middle-token", (6, 3, 1)), ("middle-channel", (32,)),
     ("small", (6, 1, 1))],
)
def test_gate_granularity_sets_the_gate_shape(tiny, x, granularity, gate_shape):
    pet.apply(tiny, "vl-pet", ["inp"], r=4, granularity=granularity)
    gate = tiny.inp.gate_values(x)
    assert gate.shape == gate_shape
    assert torch.all((gate > 0) & (gate < 1))


def test_apply_freezes_the_model_and_reports_trainable_parameters(tiny):
    report = pet.apply(tiny, "lora", r=2)
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert trainable == {"inp.lora_A.weight", "inp.lora_B.weight", "hidden.lora_A.weight",
                         "hidden.lora_B.weight"}
    assert report.trainable == 2 * 12 + 32 * 2 + 2 * 32 + 48 * 2
    assert report.total == sum(p.numel() for p in tiny.parameters())
    assert "2 layers" in str(report) and f"{report.trainable:,}" in str(report)


def test_also_train_keeps_named_modules_trainable(tiny):
    pet.apply(tiny, "lora", r=2, also_train=["head"])
    assert tiny.head.weight.requires_grad and not tiny.inp.base.weight.requires_grad


def test_all_linear_skips_the_output_head(tiny):
    report = pet.apply(tiny, "lora", "all-linear", r=2)
    assert report.layers == ["inp", "hidden"]
    assert isinstance(tiny.head, nn.Linear)


def test_all_linear_uses_get_output_embeddings_when_the_model_has_it(tiny):
    tiny.get_output_embeddings = lambda: tiny.inp
    assert pet.apply(tiny, "lora", r=2).layers == ["hidden", "head"]


def test_target_modules_take_a_full_match_regex_or_names_and_suffixes(tiny):
    assert pet.apply(tiny, "lora", r"hid.*", r=2).layers == ["hidden"]
    torch.manual_seed(0)
    other = type(tiny)()
    assert pet.apply(other, "lora", ["inp", "head"], r=2).layers == ["inp", "head"]


def test_unknown_method_is_refused_with_the_known_ones(tiny):
    with pytest.raises(PetError, match=r"unknown PET method 'dora'.*lora.*bone-bat"):
        pet.apply(tiny, "dora")


def test_unknown_setting_is_refused_with_the_known_ones(tiny):
    with pytest.raises(PetError, match=r"lora has no setting 'rank'.*alpha"):
        pet.apply(tiny, "lora", rank=4)


def test_targets_that_match_nothing_list_the_layers(tiny):
    before = snapshot(tiny)
    with pytest.raises(PetError, match=r"matches no linear layer.*inp, hidden, head"):
        pet.apply(tiny, "lora", ["q_proj"])
    assert_unchanged(tiny, before)


def test_applying_to_an_already_wrapped_layer_is_refused(tiny):
    pet.apply(tiny, "lora", ["inp"], r=2)
    before = snapshot(tiny)
    with pytest.raises(PetError, match="layer 'inp' already has a lora layer"):
        pet.apply(tiny, "bone", ["inp"], r=2)
    assert_unchanged(tiny, before)


def test_merge_that_would_give_nan_names_the_layer_and_changes_nothing(tiny):
    pet.apply(tiny, "lora", r=2)
    randomize_pet(tiny)
    with torch.no_grad():
        tiny.hidden.lora_B.weight[0, 0] = float("nan")
    before = snapshot(tiny)
    with pytest.raises(PetError, match="layer 'hidden' produced non-finite"):
        pet.merge(tiny)
    assert not tiny.inp.merged
    _, values, _ = snapshot(tiny)
    for n, v in values.items():
        assert torch.equal(v, before[1][n]) or torch.isnan(v).any(), n


def test_unload_swaps_merged_layers_for_their_linear(tiny, x):
    pet.apply(tiny, "lora", r=2)
    randomize_pet(tiny)
    adapted = tiny(x)
    pet.merge(tiny)
    assert pet.unload(tiny) == ["inp", "hidden"]
    assert type(tiny.inp) is nn.Linear and not pet.pet_layers(tiny)
    assert torch.allclose(tiny(x), adapted, atol=1e-5)


def test_a_training_step_changes_only_pet_parameters(tiny, x):
    pet.apply(tiny, "adapter", r=4, bits=1)
    frozen = {n: p.detach().clone() for n, p in tiny.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in tiny.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        tiny(x).square().mean().backward()
        opt.step()
    assert tiny.inp.up.weight.abs().sum() > 0  # the STE let gradients reach the matrix
    for n, p in tiny.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_merge_and_unmerge_twice_are_no_ops(tiny):
    pet.apply(tiny, "lora", r=2)
    randomize_pet(tiny)
    pet.merge(tiny)
    assert pet.merge(tiny).layers == []
    pet.unmerge(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pet.unmerge(tiny).layers == []


def test_unmerging_a_singular_bone_bat_block_names_the_layer_and_changes_nothing(tiny):
    pet.apply(tiny, "bone-bat", ["hidden"], r=8)
    with torch.no_grad():
        tiny.hidden.bone_block.copy_(-torch.eye(8).expand(6, 8, 8))  # I + B = 0
    pet.merge(tiny)
    before = snapshot(tiny)
    with pytest.raises(PetError, match="unmerging layer 'hidden'.*singular"):
        pet.unmerge(tiny)
    assert_unchanged(tiny, before)
    assert tiny.hidden.merged


def test_an_invalid_regex_is_refused_with_the_reason(tiny):
    with pytest.raises(PetError, match=r"target_modules='\(inp' is not a valid regex"):
        pet.apply(tiny, "lora", "(inp")


@pytest.mark.parametrize(("method", "config"), [*MERGEABLE, ("gating", {"r": 4})])
def test_pet_parameters_are_created_where_the_base_weight_lives(method, config):
    model = nn.Sequential(nn.Linear(16, 32, device="meta", dtype=torch.float64),
                          nn.Linear(32, 3, device="meta", dtype=torch.float64))
    pet.apply(model, method, **config)
    for p in model[0].pet_parameters():
        assert (p.device.type, p.dtype) == ("meta", torch.float64)


class WithTorchAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)


def test_all_linear_leaves_torch_multihead_attention_alone():
    assert pet.apply(WithTorchAttention(), "lora", r=2).layers == ["mlp"]


def test_targeting_a_torch_multihead_attention_projection_is_refused():
    model = WithTorchAttention()
    before = snapshot(model)
    with pytest.raises(PetError, match="'attn.out_proj' belongs to an nn.MultiheadAttention"):
        pet.apply(model, "lora", ["out_proj", "mlp"], r=2)
    assert_unchanged(model, before)


def test_merge_and_unmerge_accept_a_single_pet_layer(tiny, x):
    pet.apply(tiny, "lora", ["inp"], r=2)
    randomize_pet(tiny)
    adapted = tiny(x)
    assert pet.merge(tiny.inp).layers == [""]
    assert tiny.inp.merged and torch.allclose(tiny(x), adapted, atol=1e-5)
    pet.unmerge(tiny.inp)
    assert not tiny.inp.merged
    with pytest.raises(PetError, match="use .base"):
        pet.unload(tiny.inp)
