"""Round-to-nearest quantizers, per output row and group along K.

Every quantizer here returns a :class:`QuantizedTensor`; the code -> value rule
lives in :mod:`edgepet.quant.tensor` alone.
"""

from __future__ import annotations

import warnings

import numpy as np

from edgepet.quant.tensor import (
    ZERO_LEVEL_BITS,
    Bits,
    QuantizedTensor,
    check_bits,
    nearest_codes,
    num_groups,
    resolve_group_size,
)


def split_groups(a: np.ndarray, group_size: int, fill: float = np.nan) -> np.ndarray:
    """``[R, K]`` as ``[R, G, group_size]``, the tail of the last group set to ``fill``."""
    rows, k = a.shape
    g = num_groups(k, group_size)
    padded = np.full((rows, g * group_size), fill, dtype=np.float32)
    padded[:, :k] = a
    return padded.reshape(rows, g, group_size)


def tensor_from_groups(
    grouped_codes: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    bits: Bits,
    group_size: int,
    k: int,
    zero_level: bool = False,
) -> QuantizedTensor:
    """The :class:`QuantizedTensor` of codes ``[N, G, group_size]`` (padding dropped) and
    per-group scales (and zero points; None: symmetric codes)."""
    codes = grouped_codes.reshape(grouped_codes.shape[0], -1)[:, :k]
    return QuantizedTensor(
        codes=np.ascontiguousarray(codes),
        scales=scales.astype(np.float32),
        zero_points=None if zero_points is None else zero_points.astype(np.float32),
        bits=bits,
        group_size=group_size,
        symmetric=zero_points is None,
        zero_level=zero_level,
    )


def _check_weight(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {w.shape}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"weight shape {w.shape} is empty")
    w = w.astype(np.float32, copy=False)
    if not np.isfinite(w).all():
        bad = np.argwhere(~np.isfinite(w))[0]
        raise ValueError(f"weight has a non-finite value at {tuple(int(i) for i in bad)}")
    return w


def quantize(
    w: np.ndarray,
    bits: Bits = 4,
    group_size: int | str | None = 64,
    symmetric: bool = True,
    zero_level: bool = False,
) -> QuantizedTensor:
    """Quantize a float weight ``[N, K]`` to ``bits``-wide codes by rounding.

    Args:
        w: the weight, ``[out_features, in_features]``.
        bits: 1, 2, 3, 4 or "ternary".
        group_size: inputs sharing one scale: a multiple of 32, or "per-row"/None.
        symmetric: odd symmetric levels (no zero point); False stores a float
            zero point per group and maps each group's [min, max] onto the codes.
            Ternary is always symmetric.
        zero_level: symmetric codes with a zero level, ``s * (q - 2^(b-1))`` (2, 3 or
            4 bits): the scale is the group's largest-magnitude weight over ``-2^(b-1)``,
            so that weight is exact (Q4_0's rule); the other sign reaches
            ``(2^(b-1) - 1) s``.

    Scales: symmetric b-bit uses ``max|w| / (2^b - 1)`` except 1-bit, which uses
    ``mean|w|`` (the L2-optimal scale of ``sign(w)``); ternary uses ``mean|w|``
    (absmean) with a threshold of half a scale.
    """
    check_bits(bits)
    w = _check_weight(w)
    n, k = w.shape
    gs = resolve_group_size(group_size, k)
    if zero_level:
        if not symmetric or bits not in ZERO_LEVEL_BITS:
            raise ValueError("zero_level codes are symmetric 2-, 3- or 4-bit codes; got "
                             f"bits={bits!r}, symmetric={symmetric}")
        return _zero_level(w, int(bits), gs)
    if bits == "ternary":
        return _ternary(w, gs)
    if symmetric:
        return _symmetric(w, int(bits), gs)
    return _asymmetric(w, int(bits), gs)


def _symmetric(w: np.ndarray, bits: int, gs: int) -> QuantizedTensor:
    top = (1 << bits) - 1
    grouped = split_groups(w, gs)
    with np.errstate(invalid="ignore"):
        if bits == 1:
            scale = np.nanmean(np.abs(grouped), axis=2)
        else:
            scale = np.nanmax(np.abs(grouped), axis=2) / top
    codes = nearest_codes(np.nan_to_num(grouped), scale, None, bits)
    return tensor_from_groups(codes, scale, None, bits, gs, w.shape[1])


def _zero_level(w: np.ndarray, bits: int, gs: int) -> QuantizedTensor:
    half = 1 << (bits - 1)
    grouped = split_groups(w, gs, fill=0.0)
    largest = np.take_along_axis(grouped, np.abs(grouped).argmax(axis=2)[..., None], 2)[..., 0]
    # A signed scale: the largest magnitude takes code 0, -2^(b-1) steps, whatever its sign.
    scale = largest / -half
    codes = nearest_codes(grouped, scale, None, bits, zero_level=True)
    return tensor_from_groups(codes, scale, None, bits, gs, w.shape[1], zero_level=True)


def _asymmetric(w: np.ndarray, bits: int, gs: int) -> QuantizedTensor:
    top = (1 << bits) - 1
    grouped = split_groups(w, gs)
    if bits == 1:
        lo, hi = _two_means(grouped)
    else:
        lo = np.nanmin(grouped, axis=2)
        hi = np.nanmax(grouped, axis=2)
    span = hi - lo
    # A constant group keeps its value exactly: code 0 at zero point -c/s.
    scale = np.where(span > 0, span / top, np.where(lo != 0, np.abs(lo), 1.0))
    zero = -lo / scale
    codes = nearest_codes(np.nan_to_num(grouped), scale, zero, bits)
    return tensor_from_groups(codes, scale, zero, bits, gs, w.shape[1])


def _two_means(grouped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-bit asymmetric levels: the means of each group's halves split at its mean.

    Min/max levels waste a 1-bit code on the two extremes; one step of 2-means
    halves the error on Gaussian-like weights.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty lower half
        mu = np.nanmean(grouped, axis=2, keepdims=True)
        upper = grouped >= mu
        lower = grouped < mu
        hi = np.nanmean(np.where(upper, grouped, np.nan), axis=2)
        lo = np.nanmean(np.where(lower, grouped, np.nan), axis=2)
    # A constant group has no lower half: both levels are the constant.
    lo = np.where(np.isnan(lo), hi, lo)
    return lo, hi


def _ternary(w: np.ndarray, gs: int) -> QuantizedTensor:
    grouped = split_groups(w, gs)
    scale = np.nanmean(np.abs(grouped), axis=2)
    codes = nearest_codes(np.nan_to_num(grouped), scale, None, "ternary")
    return tensor_from_groups(codes, scale, None, "ternary", gs, w.shape[1])
