"""VL-PET granularity-controlled gating over an adapter's output.

After Hu et al., "VL-PET: Vision-and-Language Parameter-Efficient Tuning via
Granularity Control" (ICCV 2023): ``y = W x + G(x) * adapter(x)`` where the gate ``G``
(a sigmoid) has one of four granularities:

* ``large``: per token per channel, from a low-rank map of the input ``[..., out]``;
* ``middle-token``: one gate per token ``[..., 1]``;
* ``middle-channel``: one learned gate per output channel ``[out]``;
* ``small``: one gate per sample, from the input averaged over its tokens.

Gates depend on the input (or multiply a non-linear adapter), so gated layers do not
merge; they stay modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgepet.pet.adapter import AdapterConfig, AdapterLinear
from edgepet.pet.layer import DenseMatrix

GRANULARITIES = ("large", "middle-token", "middle-channel", "small")


@dataclass(frozen=True)
class GatingConfig(AdapterConfig):
    """Adapter settings plus the gate's ``granularity`` and, for "large", its rank."""

    granularity: str = "large"
    gate_r: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"gating granularity={self.granularity!r} is unknown — use one of "
                f"{', '.join(GRANULARITIES)}"
            )
        if self.gate_r <= 0:
            raise ValueError(f"gating gate_r={self.gate_r} must be positive")


class GatedAdapterLinear(AdapterLinear):
    """An adapter whose output is multiplied by a sigmoid gate of the chosen granularity."""

    method = "gating"

    def __init__(self, base: nn.Linear, config: GatingConfig) -> None:
        super().__init__(base, config)
        g = config.granularity
        if g == "large":
            down = torch.randn(config.gate_r, base.in_features, **self.factory)
            self.gate_down = DenseMatrix(down / base.in_features**0.5)
            up = torch.zeros(base.out_features, config.gate_r, **self.factory)
            self.gate_up = DenseMatrix(up)
        elif g == "middle-channel":
            self.gate = nn.Parameter(torch.zeros(base.out_features, **self.factory))
        else:  # middle-token, small: one gate from a linear read of the input
            self.gate_read = DenseMatrix(torch.zeros(1, base.in_features, **self.factory))
        # Gates start at sigmoid(0) = 1/2 everywhere.

    @property
    def not_mergeable_reason(self) -> str:  # type: ignore[override]
        return f"its {self.config.granularity} gate multiplies the adapter output"

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """The gate, broadcastable against the output ``[..., out]``."""
        g = self.config.granularity
        if g == "large":
            low = nn.functional.linear(x, self.gate_down())
            return torch.sigmoid(nn.functional.linear(low, self.gate_up()))
        if g == "middle-channel":
            return torch.sigmoid(self.gate)
        logit = nn.functional.linear(x, self.gate_read())
        if g == "middle-token" or x.dim() < 3:
            return torch.sigmoid(logit)
        return torch.sigmoid(logit.mean(dim=-2, keepdim=True))  # small: per sample

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.gate_values(x) * self.adapter_output(x)
