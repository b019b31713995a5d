"""Bone / MiSS: updates built from small blocks shared across the weight matrix.

Two variants (Kang & Yin, "Bone: Block-Affine Adaptation", later renamed MiSS):

* ``bone`` (row-shard, MiSS): one ``[r, out]`` matrix ``D`` tiled along the input, so
  column ``j`` of the update is row ``j mod r`` of ``D``. Forward: sum the input's
  ``r``-wide shards and multiply by ``D`` -- ``r * out`` parameters, any shape.
* ``bone-bat`` (block-affine): the weight is cut into ``r x r`` blocks ``W_ij`` (``i``
  along the output, ``j`` along the input) and each becomes ``W_ij (I + B_i) + B_i``
  with one ``B_i`` per output block -- ``out * r`` parameters; ``in`` and ``out`` must be
  multiples of ``r``. Unmerging inverts ``I + B_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgepet.pet.layer import PetError, PetLayer


@dataclass(frozen=True)
class BoneConfig:
    """Bone settings: ``r`` is the shard width (row-shard) or the block size (bat)."""

    r: int = 64

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"Bone r={self.r} must be positive")


class BoneLinear(PetLayer):
    """Row-shard Bone (MiSS): ``y = W x + D^T sum_j x[j r:(j+1) r]`` (zero-padded tail)."""

    method = "bone"
    not_mergeable_reason = None

    def __init__(self, base: nn.Linear, config: BoneConfig) -> None:
        super().__init__(base)
        self.config = config
        self.bone_block = nn.Parameter(
            torch.zeros(config.r, base.out_features, **self.factory)
        )

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.r
        pad = -x.shape[-1] % r
        shards = nn.functional.pad(x, (0, pad)).unflatten(-1, (-1, r)).sum(dim=-2)
        return self.base(x) + shards @ self.bone_block

    def delta_weight(self) -> torch.Tensor:
        reps = -(-self.in_features // self.config.r)
        return self.bone_block.t().repeat(1, reps)[:, : self.in_features]


class BoneBatLinear(PetLayer):
    """Block-affine Bone: each ``r x r`` block ``W_ij`` becomes ``W_ij (I + B_i) + B_i``."""

    method = "bone-bat"
    not_mergeable_reason = None

    def __init__(self, base: nn.Linear, config: BoneConfig) -> None:
        super().__init__(base)
        r = config.r
        if base.in_features % r or base.out_features % r:
            raise PetError(
                f"bone-bat needs in_features and out_features divisible by r={r}, got "
                f"in={base.in_features}, out={base.out_features} — pick an r that divides "
                f"both, or use method 'bone' (row-shard), which fits any shape"
            )
        self.config = config
        self.bone_block = nn.Parameter(
            torch.zeros(base.out_features // r, r, r, **self.factory)
        )

    def _blocks(self, w: torch.Tensor) -> torch.Tensor:
        """``[out, in]`` -> ``[out/r, in/r, r, r]`` with ``[i, j] = W_ij``."""
        r = self.config.r
        return w.reshape(self.out_features // r, r, self.in_features // r, r).permute(0, 2, 1, 3)

    def _unblocks(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.permute(0, 2, 1, 3).reshape(self.out_features, self.in_features)

    def adapted_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``W_ij (I + B_i) + B_i`` for every block."""
        b = self.bone_block[:, None]
        return self._unblocks(self._blocks(w) @ b + self._blocks(w) + b)

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.adapted_weight(self.base.weight), self.base.bias)

    def delta_weight(self) -> torch.Tensor:
        w = self.base.weight
        return self.adapted_weight(w) - w

    def unmerged_weight(self, merged: torch.Tensor) -> torch.Tensor:
        """``W_ij = (W'_ij - B_i) (I + B_i)^-1``, solved in float64."""
        b = self.bone_block.double()[:, None]
        eye = torch.eye(self.config.r, dtype=torch.float64, device=merged.device)
        lhs = self._blocks(merged.double()) - b
        try:
            w = torch.linalg.solve(eye + b, lhs, left=False)
        except RuntimeError as e:  # torch raises on an exactly singular matrix
            raise PetError(
                f"bone-bat: I + B is singular ({e}) — the merge cannot be undone"
            ) from e
        return self._unblocks(w).to(merged.dtype)
