"""Helpers shared by the PET tests."""

import torch
from torch import nn


def randomize_pet(model: nn.Module, std: float = 0.1) -> None:
    """Give every trainable parameter a random value, as if trained."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def snapshot(model: nn.Module):
    """Module types, parameter values and requires_grad flags, to check nothing changed."""
    return (
        [(n, type(m).__name__) for n, m in model.named_modules()],
        {n: p.detach().clone() for n, p in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_unchanged(model: nn.Module, before) -> None:
    types, values, grads = snapshot(model)
    assert types == before[0]
    assert values.keys() == before[1].keys()
    for n in values:
        assert torch.equal(values[n], before[1][n]), n
    assert grads == before[2]
