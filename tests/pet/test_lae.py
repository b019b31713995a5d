"""LAE: an online PET module, its EMA offline copy, and their max-softmax ensemble."""

import pytest
import torch
from pet_helpers import randomize_pet

from edgepet.pet import LAE


def test_offline_module_starts_equal_to_the_online_one(tiny):
    lae = LAE(tiny, "adapter", r=4)
    online = dict(tiny.named_parameters())
    for name, value in lae.offline_state().items():
        assert torch.equal(value, online[name])


def test_accumulate_is_an_exponential_moving_average(tiny):
    lae = LAE(tiny, "lora", r=2, ema_decay=0.75)
    old = {n: v.clone() for n, v in lae.offline_state().items()}
    randomize_pet(tiny)
    lae.accumulate()
    online = dict(tiny.named_parameters())
    for name, value in lae.offline_state().items():
        assert torch.allclose(value, 0.75 * old[name] + 0.25 * online[name].detach())


def test_offline_logits_use_the_offline_parameters(tiny, x):
    lae = LAE(tiny, "adapter", r=4)
    offline_before = lae.offline_logits(x)
    randomize_pet(tiny)
    assert torch.equal(lae.offline_logits(x), offline_before)
    assert not torch.allclose(lae.online_logits(x), offline_before)


def test_prediction_is_the_elementwise_max_of_the_two_softmaxes(tiny, x):
    lae = LAE(tiny, "adapter", r=4, ema_decay=0.5)
    randomize_pet(tiny)
    lae.accumulate()
    randomize_pet(tiny, std=0.3)
    probs = lae(x)
    expected = torch.maximum(lae.online_logits(x).softmax(-1), lae.offline_logits(x).softmax(-1))
    assert torch.equal(probs, expected)


def test_online_parameters_are_the_trainable_ones(tiny):
    lae = LAE(tiny, "lora", r=2, also_train=["head"])
    names = {id(p) for p in lae.online_parameters()}
    assert names == {id(p) for p in tiny.parameters() if p.requires_grad}
    assert id(tiny.head.weight) in names


def test_offline_module_is_saved_in_the_state_dict(tiny):
    lae = LAE(tiny, "lora", r=2)
    assert any(k.startswith("offline.") for k in lae.state_dict())


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_outside_zero_one_is_refused(tiny, decay):
    with pytest.raises(ValueError, match="ema_decay"):
        LAE(tiny, "lora", ema_decay=decay)
