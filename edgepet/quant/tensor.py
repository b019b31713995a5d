"""`QuantizedTensor` and the one definition of what a code stands for.

The code -> value rule (every kernel, the ONNX operator and the exporters agree
with it; :meth:`QuantizedTensor.dequantize` is its executable form):

* ``symmetric`` b-bit codes ``q`` in ``[0, 2^b - 1]``:  ``w = s * (2q - (2^b - 1))``
  -- odd multiples of the scale, no zero level (1-bit is ``+-s``).
* ``zero_level`` symmetric codes (2, 3, 4 bits):        ``w = s * (q - 2^(b-1))``
  -- the grid of Q4_0 and of ONNX Runtime's symmetric MatMulNBits: a zero level,
  ``2^(b-1)`` steps below it and ``2^(b-1) - 1`` above; no zero points stored.
* asymmetric b-bit codes:                              ``w = s * (q - z)``
  with a float zero point ``z`` per group.
* ternary codes ``q`` in ``{0, 1, 2}``:                  ``w = s * (q - 1)``.

``s`` and ``z`` are per output row and per group of ``group_size`` consecutive
inputs along K (the last group of a row may be shorter). Both are stored as IEEE
fp16 (:data:`SCALE_DTYPE`): a :class:`QuantizedTensor` rounds them to fp16 once, when
it is made, and the rule above uses the rounded values -- so what the kernels read
is exactly what :meth:`QuantizedTensor.dequantize` means. Why odd levels for
symmetric codes: written as bit-planes, ``2q - (2^b - 1) = sum_i 2^i (2 b_i - 1)``,
so every plane is a vector of +-1 and a table of signed activation sums serves
all planes -- the heart of the LUT kernel. Zero-level codes are the same planes with
an offset, ``q - 2^(b-1) = (2q - (2^b - 1)) / 2 - 1/2``: the kernels add
``-s/2 * sum(a)`` per group, as they do for zero points.
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
#: The widths that have zero-level codes (1-bit codes are signs; ternary has a zero).
ZERO_LEVEL_BITS = (2, 3, 4)

#: How scales and zero points are stored (and read by the kernels): at 2 bits and
#: group 64, fp32 scales would add half a bit to every weight a product reads.
SCALE_DTYPE = np.float16
_SCALE_MAX = float(np.finfo(SCALE_DTYPE).max)


def storage_values(values: np.ndarray, what: str = "scales") -> np.ndarray:
    """``values`` (scales or zero points) rounded to :data:`SCALE_DTYPE`, as float32.

    Raises ValueError for values fp16 cannot hold (beyond +-65504, inf, nan).
    """
    values = np.asarray(values, dtype=np.float32)
    if values.size and not (np.isfinite(values).all() and np.abs(values).max() <= _SCALE_MAX):
        raise ValueError(
            f"{what} must be finite and within +-{_SCALE_MAX:g} (stored as fp16); got "
            f"max |value| {np.abs(values).max():g} — rescale the weights"
        )
    return values.astype(SCALE_DTYPE).astype(np.float32)


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
    w: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: Bits,
    zero_level: bool = False,
) -> np.ndarray:
    """The inverse of the rule: the uint8 codes whose values are nearest to ``w``.

    ``w`` is grouped, ``[..., group]``; ``scales`` (and ``zero_points`` for asymmetric
    codes) are ``[...]``, one per group, taken as stored (rounded to fp16). A zero
    scale gives the middle code.
    """
    scales = storage_values(scales)
    if zero_points is not None:
        zero_points = storage_values(zero_points, "zero_points")
    if zero_level:  # signed scales (the largest magnitude at code 0, as Q4_0)
        half = 1 << (int(bits) - 1)
        safe = np.where(scales != 0, scales, 1.0)[..., None]
        return np.clip(np.rint(w / safe + half), 0, 2 * half - 1).astype(np.uint8)
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    if bits == "ternary":
        return (np.clip(np.rint(w / safe), -1, 1) + 1).astype(np.uint8)
    top = (1 << int(bits)) - 1
    if zero_points is None:
        return np.clip(np.rint((w / safe + top) / 2.0), 0, top).astype(np.uint8)
    return np.clip(np.rint(w / safe + zero_points[..., None]), 0, top).astype(np.uint8)


def code_values(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: Bits,
    zero_level: bool = False,
) -> np.ndarray:
    """The code -> value rule, on arrays that broadcast against ``codes``: ``s * (q - 1)``
    for ternary, ``s * (q - 2^(b-1))`` for zero-level codes, ``s * (2q - (2^b - 1))`` for
    (odd-level) symmetric codes, ``s * (q - z)`` otherwise.

    ``scales`` and ``zero_points`` are taken as given (already rounded to their storage
    type); :meth:`QuantizedTensor.dequantize` is this rule on a whole tensor.
    """
    q = codes.astype(np.float32)
    if bits == "ternary":
        return scales * (q - 1.0)
    if zero_level:
        return scales * (q - float(1 << (int(bits) - 1)))
    if zero_points is None:
        return scales * (2.0 * q - float((1 << int(bits)) - 1))
    return scales * (q - zero_points)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A weight matrix ``[N, K]`` stored as low-bit codes with group scales.

    Immutable: its arrays are read-only views, so that what was derived from it once
    (a kernel's packed codes, say) stays valid. Equality is identity.

    Attributes:
        codes: uint8 ``[N, K]``, one code per weight (unpacked; packing for a
            kernel layout is :func:`edgepet.kernels.pack`).
        scales: float32 ``[N, G]``, rounded to fp16 on construction (as stored).
        zero_points: float32 ``[N, G]`` for asymmetric codes, else None; rounded
            to fp16 likewise.
        bits: 1, 2, 3, 4 or "ternary".
        group_size: inputs per group along K (``K`` means per-row).
        symmetric: symmetric codes (no zero points). Ternary counts as symmetric.
        zero_level: symmetric codes with a zero level, ``s * (q - 2^(b-1))`` (2, 3 or
            4 bits; op ABI 6), instead of the odd levels ``s * (2q - (2^b - 1))``.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: Bits
    group_size: int
    symmetric: bool
    zero_level: bool = False

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
        if self.zero_level and (not self.symmetric or self.bits not in ZERO_LEVEL_BITS):
            raise ValueError(
                "zero_level codes are symmetric 2-, 3- or 4-bit codes (no zero points); got "
                f"bits={self.bits!r}, symmetric={self.symmetric}"
            )
        if self.codes.size and int(self.codes.max()) > self.max_code:
            raise ValueError(
                f"codes exceed {self.max_code}, the largest {self.bits}-bit code"
            )
        object.__setattr__(self, "scales", storage_values(self.scales))
        if self.zero_points is not None:
            object.__setattr__(self, "zero_points",
                               storage_values(self.zero_points, "zero_points"))
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
        z = None if self.zero_points is None else self.zero_points[:, group_of_k]
        return code_values(self.codes, self.scales[:, group_of_k], z, self.bits,
                           self.zero_level)

    def nbytes_packed(self) -> int:
        """Bytes of codes + scales (+ zero points) as shipped, before layout padding."""
        n, k = self.shape
        code_bytes = -(-n * k * self.storage_bits // 8)
        itemsize = np.dtype(SCALE_DTYPE).itemsize
        extra = self.scales.size * itemsize + (
            0 if self.zero_points is None else self.zero_points.size * itemsize
        )
        return code_bytes + extra

    @property
    def bits_per_weight(self) -> float:
        """Bits a product reads per weight: codes + scales + zero points, as stored.

        2-bit codes in groups of 64 read 2.25 (2 + 16/64); asymmetric 2.5.
        """
        n, k = self.shape
        return 8.0 * self.nbytes_packed() / (n * k) if n * k else 0.0
