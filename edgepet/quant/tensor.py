"""`QuantizedTensor` and the one definition of what a code stands for.

The code -> value rule (every kernel, the ONNX operator and the exporters agree
with it; :meth:`QuantizedTensor.dequantize` is its executable form):

* ``symmetric`` b-bit codes ``q`` in ``[0, 2^b - 1]``:  ``w = s * (2q - (2^b - 1))``
  -- odd multiples of the scale, no zero level (1-bit is ``+-s``).
* asymmetric b-bit codes:                              ``w = s * (q - z)``
  with a float zero point ``z`` per group.
* ternary codes ``q`` in ``{0, 1, 2}``:                  ``w = s * (q - 1)``.

``s`` and ``z`` are per output row and per group of ``group_size`` consecutive
inputs along K (the last group of a row may be shorter). Why odd levels for
symmetric codes: written as bit-planes, ``2q - (2^b - 1) = sum_i 2^i (2 b_i - 1)``,
so every plane is a vector of +-1 and a table of signed activation sums serves
all planes -- the heart of the LUT kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

Bits = Union[int, Literal["ternary"]]  # noqa: UP007 (a runtime alias on 3.10)

#: Group sizes must be multiples of this (or cover the whole row): the kernels
#: quantize their activation tables per block of 32 inputs.
GROUP_MULTIPLE = 32

SUPPORTED_BITS = (1, 2, 3, 4, "ternary")


def check_bits(bits: object) -> None:
    """Raise ValueError unless ``bits`` is one of 1, 2, 3, 4 or "ternary"."""
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise ValueError(
            f"bits={bits!r} is not supported — use one of 1, 2, 3, 4 or 'ternary'"
        )


def storage_bits(bits: Bits) -> int:
    """Bits stored per weight: ternary codes take two bit-planes."""
    return 2 if bits == "ternary" else int(bits)


def resolve_group_size(group_size: int | str | None, k: int) -> int:
    """Turn a user's group size (int, None or "per-row") into the int stored.

    Per-row quantization is stored as ``group_size == K``.
    """
    if group_size is None or group_size == "per-row":
        return k
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ValueError(f"group_size={group_size!r} must be an int or 'per-row'")
    group_size = int(group_size)
    if group_size <= 0:
        raise ValueError(f"group_size={group_size} must be positive")
    if group_size >= k:
        return k
    if group_size % GROUP_MULTIPLE:
        raise ValueError(
            f"group_size={group_size} is not a multiple of {GROUP_MULTIPLE} — the LUT "
            f"kernels scale their tables per {GROUP_MULTIPLE} inputs; use 32, 64, 128, "
            f"... or 'per-row'"
        )
    return group_size


def num_groups(k: int, group_size: int) -> int:
    """Groups per row along K (the last one may be partial)."""
    return -(-k // group_size)


def nearest_codes(
    w: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: Bits
) -> np.ndarray:
    """The inverse of the rule: the uint8 codes whose values are nearest to ``w``.

    ``w`` is grouped, ``[..., group]``; ``scales`` (and ``zero_points`` for asymmetric
    codes) are ``[...]``, one per group. A zero scale gives the middle code.
    """
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    if bits == "ternary":
        return (np.clip(np.rint(w / safe), -1, 1) + 1).astype(np.uint8)
    top = (1 << int(bits)) - 1
    if zero_points is None:
        return np.clip(np.rint((w / safe + top) / 2.0), 0, top).astype(np.uint8)
    return np.clip(np.rint(w / safe + zero_points[..., None]), 0, top).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A weight matrix ``[N, K]`` stored as low-bit codes with group scales.

    Immutable: its arrays are read-only views, so that what was derived from it once
    (a kernel's packed codes, say) stays valid. Equality is identity.

    Attributes:
        codes: uint8 ``[N, K]``, one code per weight (unpacked; packing for a
            kernel layout is :func:`edgepet.kernels.pack`).
        scales: float32 ``[N, G]``.
        zero_points: float32 ``[N, G]`` for asymmetric codes, else None.
        bits: 1, 2, 3, 4 or "ternary".
        group_size: inputs per group along K (``K`` means per-row).
        symmetric: symmetric codes (no zero points). Ternary counts as symmetric.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: Bits
    group_size: int
    symmetric: bool

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.codes.ndim != 2 or self.codes.dtype != np.uint8:
            raise ValueError(
                f"codes must be uint8 [N, K], got {self.codes.dtype} {self.codes.shape}"
            )
        n, k = self.codes.shape
        expected = (n, num_groups(k, self.group_size))
        if self.scales.shape != expected or self.scales.dtype != np.float32:
            raise ValueError(
                f"scales must be float32 {expected} (K={k}, group_size="
                f"{self.group_size}), got {self.scales.dtype} {self.scales.shape}"
            )
        if self.symmetric != (self.zero_points is None):
            raise ValueError(
                "zero_points must be given exactly when symmetric=False"
            )
        if self.zero_points is not None and (
            self.zero_points.shape != expected or self.zero_points.dtype != np.float32
        ):
            raise ValueError(
                f"zero_points must be float32 {expected}, got "
                f"{self.zero_points.dtype} {self.zero_points.shape}"
            )
        if self.bits == "ternary" and not self.symmetric:
            raise ValueError("ternary codes are symmetric: pass symmetric=True")
        if self.codes.size and int(self.codes.max()) > self.max_code:
            raise ValueError(
                f"codes exceed {self.max_code}, the largest {self.bits}-bit code"
            )
        for name in ("codes", "scales", "zero_points"):
            array = getattr(self, name)
            if array is not None:
                view = array.view()
                view.flags.writeable = False
                object.__setattr__(self, name, view)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``: output features, input features."""
        return self.codes.shape  # type: ignore[return-value]

    @property
    def max_code(self) -> int:
        """Largest valid code value."""
        return 2 if self.bits == "ternary" else (1 << int(self.bits)) - 1

    @property
    def storage_bits(self) -> int:
        """Bits stored per weight (ternary: 2)."""
        return storage_bits(self.bits)

    def dequantize(self) -> np.ndarray:
        """The exact float32 ``[N, K]`` weights the codes stand for."""
        n, k = self.shape
        group_of_k = np.arange(k) // self.group_size
        s = self.scales[:, group_of_k]
        q = self.codes.astype(np.float32)
        if self.bits == "ternary":
            return s * (q - 1.0)
        if self.symmetric:
            return s * (2.0 * q - float(self.max_code))
        z = self.zero_points[:, group_of_k]  # type: ignore[index]
        return s * (q - z)

    def nbytes_packed(self) -> int:
        """Bytes of codes + scales (+ zero points) as shipped, before layout padding."""
        n, k = self.shape
        code_bytes = -(-n * k * self.storage_bits // 8)
        extra = self.scales.nbytes + (
            0 if self.zero_points is None else self.zero_points.nbytes
        )
        return code_bytes + extra
