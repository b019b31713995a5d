"""LoRA: ``y = W x + scale * B A x`` with ``A`` ``[r, in]``, ``B`` ``[out, r]``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgepet.pet.layer import PetLayer, make_matrix
from edgepet.pet.lowbit import check_adapter_bits


@dataclass(frozen=True)
class LoraConfig:
    """LoRA settings.

    Attributes:
        r: rank of the update.
        alpha: scale numerator: ``scale = alpha / r``, or ``alpha / sqrt(r)`` with rslora.
        rslora: rank-stabilized scaling (Kalajdzievski, 2023).
        bits: None for float32 matrices, or 1-4 to train ``A`` and ``B`` as k-bit
            Gaussian-codebook matrices (see :mod:`edgepet.pet.lowbit`).
    """

    r: int = 8
    alpha: float = 16.0
    rslora: bool = False
    bits: int | None = None

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRA r={self.r} must be positive")
        if self.bits is not None:
            check_adapter_bits(self.bits)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoraLinear(PetLayer):
    """LoRA around an ``nn.Linear``; ``B`` starts at zero so training starts from ``W``."""

    method = "lora"
    not_mergeable_reason = None

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__(base)
        self.config = config
        a = torch.empty(config.r, base.in_features, **self.factory)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(base.out_features, config.r, **self.factory)
        self.lora_A = make_matrix(a, config.bits)
        self.lora_B = make_matrix(b, config.bits)

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        low = nn.functional.linear(x, self.lora_A())
        return self.base(x) + self.config.scale * nn.functional.linear(low, self.lora_B())

    def delta_weight(self) -> torch.Tensor:
        return self.config.scale * (self.lora_B() @ self.lora_A())
