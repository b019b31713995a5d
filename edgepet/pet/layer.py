"""The protocol every PET layer follows, and the matrices they hold.

A PET layer wraps one ``nn.Linear`` (kept as ``.base``) and adds a trainable update.
If the update is linear in the input it can be folded into the base weight:
:meth:`PetLayer.delta_weight` says by how much. Merging is written once, in
:mod:`edgepet.pet.model`, on top of that one method.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from edgepet.pet.lowbit import LowBitMatrix, PackedMatrix
from edgepet.quant import QuantizedTensor


class PetError(ValueError):
    """A PET operation was refused; the message names the layer and what to do."""


class NotMergeable(PetError):
    """The layer's update is not a fixed change of the base weight, so it cannot merge."""


class DenseMatrix(nn.Module):
    """A float matrix used as is: calling it returns the weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight

    def stored_bytes(self) -> int:
        """Bytes this matrix takes in an adapter file (float32 as trained)."""
        return self.weight.numel() * self.weight.element_size()


def make_matrix(weight: torch.Tensor, bits: int | None) -> nn.Module:
    """A trainable matrix of a PET method: float, or k-bit when ``bits`` is given."""
    return DenseMatrix(weight) if bits is None else LowBitMatrix(weight, bits)


class PetLayer(nn.Module):
    """Base of all PET layers: ``y = base(x) + update(x)``, or ``base(x)`` once merged.

    Subclasses set ``method``, implement :meth:`update_forward` and, when their math
    allows, :meth:`delta_weight`. ``merged`` is True while the update lives inside
    ``base.weight`` (see :func:`edgepet.pet.merge`).
    """

    method: ClassVar[str] = "pet"
    #: Why :meth:`delta_weight` cannot exist; None for mergeable layers (a subclass
    #: may make it a property when it depends on the configuration).
    not_mergeable_reason: str | None = "its update depends on the input non-linearly"

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise PetError(f"{self.method} wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        self.merged = False

    @property
    def factory(self) -> dict:
        """``dtype`` and ``device`` of the base weight, for creating the update's tensors."""
        return {"dtype": self.base.weight.dtype, "device": self.base.weight.device}

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.update_forward(x)

    def update_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapted output (base plus update) while not merged."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """``W_merged - W``: how much the update changes the base weight ``[out, in]``.

        Computed from the unmerged base weight. Raises :class:`NotMergeable` for
        methods whose update is not a fixed linear map.
        """
        raise NotMergeable(f"{self.method} layers cannot merge: {self.not_mergeable_reason}")

    def unmerged_weight(self, merged: torch.Tensor) -> torch.Tensor:
        """The base weight before merging, given the merged one (additive by default)."""
        return merged - self.delta_weight()

    def is_mergeable(self) -> bool:
        """Whether :meth:`delta_weight` exists for this layer as configured."""
        return self.not_mergeable_reason is None

    def pet_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters this layer added (not the base's)."""
        base_ids = {id(p) for p in self.base.parameters()}
        return [p for p in self.parameters() if id(p) not in base_ids]

    def stored_bytes(self) -> int:
        """Bytes this layer's update takes when shipped apart from the base."""
        total = 0
        for child_name, child in self.named_children():
            if child_name == "base":
                continue
            if hasattr(child, "stored_bytes"):
                total += child.stored_bytes()
            else:
                total += sum(p.numel() * p.element_size() for p in child.parameters())
        total += sum(p.numel() * p.element_size() for p in self.parameters(recurse=False))
        return total

    def _packed(self) -> dict[str, PackedMatrix]:
        found = {n: m for n, m in self.named_children() if isinstance(m, PackedMatrix)}
        if not found:
            raise PetError(
                f"this {self.method} layer has no binarized matrix — train it with bits=1..4 "
                f"and call edgepet.pet.binarize(model) first"
            )
        return found

    def quantized_weights(self) -> dict[str, QuantizedTensor]:
        """The binarized 1-bit matrices by attribute name (e.g. "down", "up").

        Each ``dequantize()`` gives exactly the weights the forward pass uses. 2-4-bit
        Gaussian codebooks have uneven levels: use :meth:`frozen_weights` for those.
        """
        return {n: m.quantized_tensor() for n, m in self._packed().items()}

    def frozen_weights(self) -> dict[str, np.ndarray]:
        """The binarized k-bit matrices as the float32 weights the forward pass uses."""
        return {n: m.dequantized() for n, m in self._packed().items()}

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, merged={self.merged}"
