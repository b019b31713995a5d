"""Bottleneck adapter in parallel (AdaptFormer): ``y = W x + s * up(act(down(x)))``.

With ``bits`` set, ``down`` and ``up`` are trained as k-bit Gaussian-codebook matrices
(the 1-bit adapter of Jin et al., 2023); :func:`edgepet.pet.binarize` then freezes them
into packed codes. Biases stay float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgepet.pet.layer import PetLayer, make_matrix
from edgepet.pet.lowbit import check_adapter_bits

ACTIVATIONS = {
    "relu": nn.functional.relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "identity": lambda x: x,
}


@dataclass(frozen=True)
class AdapterConfig:
    """Adapter settings.

    Attributes:
        r: bottleneck width.
        scale: ``s``, multiplies the adapter's output.
        activation: "relu", "gelu", "silu" or "identity" (identity + no bias merges).
        bias: biases on ``down`` and ``up``.
        bits: None for float32, or 1-4 for k-bit ``down``/``up`` trained with STE.
    """

    r: int = 8
    scale: float = 1.0
    activation: str = "relu"
    bias: bool = True
    bits: int | None = None

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"adapter r={self.r} must be positive")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"adapter activation={self.activation!r} is unknown — use one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        if self.bits is not None:
            check_adapter_bits(self.bits)


class AdapterLinear(PetLayer):
    """A parallel bottleneck adapter around an ``nn.Linear``; ``up`` starts at zero."""

    method = "adapter"

    def __init__(self, base: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base)
        self.config = config
        down = torch.empty(config.r, base.in_features, **self.factory)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.down = make_matrix(down, config.bits)
        self.up = make_matrix(torch.zeros(base.out_features, config.r, **self.factory), config.bits)
        if config.bias:
            self.down_bias = nn.Parameter(torch.zeros(config.r, **self.factory))
            self.up_bias = nn.Parameter(torch.zeros(base.out_features, **self.factory))
        else:
            self.down_bias = self.up_bias = None

    @property
    def not_mergeable_reason(self) -> str | None:  # type: ignore[override]
        if self.config.activation != "identity":
            return f"its {self.config.activation} activation is not linear"
        if self.config.bias:
            return "its biases would change the base bias (use bias=False to merge)"
        return None

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """``s * up(act(down(x)))``: what the adapter adds to the base output."""
        act = ACTIVATIONS[self.config.activation]
        hidden = act(nn.functional.linear(x, self.down(), self.down_bias))
        return self.config.scale * nn.functional.linear(hidden, self.up(), self.up_bias)

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter_output(x)

    def delta_weight(self) -> torch.Tensor:
        if self.not_mergeable_reason is not None:
            return super().delta_weight()
        return self.config.scale * (self.up() @ self.down())
