"""Error-minimizing quantization: search clipping, scale and zero point per group.

Round-to-nearest (:func:`edgepet.quant.quantize`) fixes each group's scale from its
range; with few bits, clipping the range is often better. :func:`search_quantize`
tries a grid of clipping factors (and, for asymmetric codes, zero-point shifts) per
group, keeps the best, then refits scale and zero point by least squares for the
chosen codes. The error it minimizes is the weight MSE, or -- given calibration
activations ``X`` -- the output error ``||X_g (W_g - Q_g)^T||^2`` of each group
(within-group exact, cross-group terms ignored). Candidates are always judged on
their :meth:`~edgepet.quant.QuantizedTensor.dequantize` values, so the code -> value
rule stays defined once; the RTN result is one of the candidates, so the search is
never worse than RTN on its objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepet.quant.rtn import quantize, split_groups, tensor_from_groups
from edgepet.quant.tensor import (
    Bits,
    QuantizedTensor,
    check_bits,
    code_values,
    nearest_codes,
    num_groups,
    resolve_group_size,
    storage_values,
)


@dataclass(frozen=True)
class QuantError:
    """How far quantized weights are from the originals.

    Attributes:
        weight_mse: mean of ``(W - Q)^2``.
        weight_rel: ``||W - Q|| / ||W||`` (Frobenius).
        output_mse: mean of ``(X W^T - X Q^T)^2`` when activations were given.
        output_rel: ``||X (W - Q)^T|| / ||X W^T||`` when activations were given.
    """

    weight_mse: float
    weight_rel: float
    output_mse: float | None = None
    output_rel: float | None = None


def _as_matrix(w: np.ndarray) -> np.ndarray:
    """A float32 ``[N, K]`` copy check (same rules as :func:`edgepet.quant.quantize`)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"weight must be a non-empty 2-D [N, K] array, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight has non-finite values (NaN or inf)")
    return w


def _activations(x: np.ndarray | None, k: int) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    if x.shape[1] != k:
        raise ValueError(f"activations have {x.shape[1]} features, the weight has K={k}")
    if x.shape[0] == 0 or not np.isfinite(x).all():
        raise ValueError("activations must be a non-empty finite [M, K] array")
    return x


def quantization_error(
    w: np.ndarray, qt: QuantizedTensor, activations: np.ndarray | None = None
) -> QuantError:
    """Weight error of ``qt`` against ``w``, and output error on ``activations`` ``[M, K]``."""
    w = _as_matrix(w)
    d = w - qt.dequantize()
    norm = float(np.linalg.norm(w))
    weight_rel = float(np.linalg.norm(d)) / norm if norm > 0 else float(np.linalg.norm(d))
    x = _activations(activations, w.shape[1])
    if x is None:
        return QuantError(float(np.mean(d * d)), weight_rel)
    out_d = x @ d.T
    out = x @ w.T
    out_norm = float(np.linalg.norm(out))
    out_rel = float(np.linalg.norm(out_d)) / out_norm if out_norm > 0 else 0.0
    return QuantError(float(np.mean(d * d)), weight_rel, float(np.mean(out_d * out_d)), out_rel)


class _Groups:
    """A weight cut into ``[N, G, gs]`` groups (zero-padded) and the error metric."""

    def __init__(self, w: np.ndarray, gs: int, x: np.ndarray | None) -> None:
        k = w.shape[1]
        self.k, self.gs, self.g = k, gs, num_groups(k, gs)
        self.w = self.split(w)
        self.mask = np.zeros(self.g * gs, dtype=np.float32)
        self.mask[:k] = 1.0
        self.mask = self.mask.reshape(self.g, gs)
        self.h = None
        if x is not None:
            xg = self.split(x)  # [M, G, gs]
            xg = xg.transpose(1, 0, 2)  # [G, M, gs]
            self.h = np.matmul(xg.transpose(0, 2, 1), xg) / x.shape[0]

    def split(self, a: np.ndarray) -> np.ndarray:
        return split_groups(a, self.gs, fill=0.0)

    def weigh(self, d: np.ndarray) -> np.ndarray:
        """``H d`` per group (``H`` = the group's activation Gram matrix, or the mask)."""
        if self.h is None:
            return d * self.mask
        if self.gs < 512:  # measured: einsum wins for small blocks, BLAS for large ones
            return np.einsum("gij,ngj->ngi", self.h, d)
        return np.matmul(d.transpose(1, 0, 2), self.h).transpose(1, 0, 2)  # H is symmetric

    def error(self, q: np.ndarray) -> np.ndarray:
        """Per-group error ``[N, G]`` of grouped dequantized weights ``q``."""
        d = self.w - q
        return np.sum(d * self.weigh(d), axis=2)


def _candidate(groups: _Groups, bits, s, z, zero_level: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Grouped codes and per-group error ``[N, G]`` for scales ``s``, zero points ``z``.

    The values are the codes' dequantized values, scales and zero points rounded as
    stored; padding past K gets a value too, which the error ignores (its weight, the
    mask or the zero-padded activations, is zero there).
    """
    codes = nearest_codes(groups.w, s, z, bits, zero_level)
    zs = None if z is None else storage_values(z, "zero_points")[..., None]
    return codes, groups.error(code_values(codes, storage_values(s)[..., None], zs, bits,
                                           zero_level))


def _refit(groups: _Groups, bits, codes: np.ndarray, symmetric: bool, zero_level: bool = False):
    """Least-squares scale (and zero point) for fixed codes, weighted like the error.

    Returns ``(s, z)`` per group (``z`` None for symmetric codes), NaN where no fit.
    """
    q = codes.astype(np.float32)
    if bits == "ternary":
        return _fit_scale(groups, q - 1.0), None
    if zero_level:  # signed scales: the levels' sign is the scale's
        return _fit_scale(groups, q - float(1 << (int(bits) - 1)), signed=True), None
    if symmetric:
        return _fit_scale(groups, 2.0 * q - ((1 << int(bits)) - 1)), None
    return _fit_affine(groups, q)


def _fit_scale(groups: _Groups, levels: np.ndarray, signed: bool = False) -> np.ndarray:
    """``s`` minimizing the error of ``s * levels`` (levels: codes as odd/ternary/zero-level
    units); ``signed``: a negative ``s`` is a fit too (zero-level codes)."""
    hl = groups.weigh(levels)
    den = np.sum(levels * hl, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sum(groups.w * hl, axis=2) / den
    return np.where((den > 0) & ((s != 0) if signed else (s > 0)) & np.isfinite(s), s, np.nan)


def _fit_affine(groups: _Groups, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s, z`` minimizing the error of ``s * (q - z)``: a weighted line fit ``s q + t``."""
    one = np.broadcast_to(groups.mask, q.shape)
    hq, h1 = groups.weigh(q), groups.weigh(one)
    a, b, c = np.sum(q * hq, 2), np.sum(q * h1, 2), np.sum(one * h1, 2)
    r1, r2 = np.sum(groups.w * hq, 2), np.sum(groups.w * h1, 2)
    det = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (c * r1 - b * r2) / det
        t = (a * r2 - b * r1) / det
        z = -t / s
    ok = (np.abs(det) > 1e-12 * np.maximum(a * c, 1e-30)) & (s > 0) & np.isfinite(z)
    return np.where(ok, s, np.nan), np.where(ok, z, np.nan)


def search_quantize(
    w: np.ndarray,
    bits: Bits = 4,
    group_size: int | str | None = 64,
    symmetric: bool = True,
    activations: np.ndarray | None = None,
    grid: int = 20,
    refits: int = 2,
    zero_level: bool = False,
) -> QuantizedTensor:
    """Quantize ``w`` ``[N, K]`` choosing each group's clip, scale (and zero point) to
    minimize weight MSE, or output MSE on ``activations`` ``[M, K]`` if given.

    Args:
        w, bits, group_size, symmetric: as for :func:`edgepet.quant.quantize`.
        activations: calibration inputs of this layer, any shape ``[..., K]``.
        grid: clipping factors tried per group (more: slower, slightly better).
        refits: rounds of least-squares refit of scale/zero point for the chosen codes.
        zero_level: symmetric codes with a zero level (as :func:`edgepet.quant.quantize`).

    Returns the same kind of :class:`QuantizedTensor` as RTN, never worse than it on the
    objective.
    """
    check_bits(bits)
    w = _as_matrix(w)
    gs = resolve_group_size(group_size, w.shape[1])
    x = _activations(activations, w.shape[1])
    groups = _Groups(w, gs, x)
    base = quantize(w, bits, gs, symmetric, zero_level)
    sym = base.symmetric
    mean_based = bits in (1, "ternary")
    alphas = np.unique(np.append(np.linspace(0.5, 1.5 if mean_based else 1.0, grid), 1.0))
    shifts = [0.0] if sym else [-0.4, -0.2, 0.0, 0.2, 0.4]

    best_s, best_z = base.scales.copy(), None if sym else base.zero_points.copy()
    best_codes, best_err = _candidate(groups, bits, best_s, best_z, zero_level)

    def consider(s, z):
        nonlocal best_codes, best_err
        codes, err = _candidate(groups, bits, s, z, zero_level)
        better = err < best_err
        best_s[better] = s[better]
        if z is not None:
            best_z[better] = z[better]
        best_codes[better] = codes[better]
        best_err = np.where(better, err, best_err)

    for alpha in alphas:
        for shift in shifts:
            if sym:
                consider(base.scales * alpha, None)
            else:
                # Shrink [lo, hi] about its centre by alpha, then shift by steps.
                top = base.max_code
                centre = base.scales * (top / 2.0 - base.zero_points)
                s = base.scales * alpha
                consider(s, top / 2.0 - centre / s + shift)
    for _ in range(refits):
        s, z = _refit(groups, bits, best_codes, sym, zero_level)
        fit = np.isfinite(s)
        s = np.where(fit, s, best_s)
        z = None if z is None else np.where(fit, z, best_z)
        consider(s, z)
    return tensor_from_groups(best_codes, best_s, None if sym else best_z, bits, gs, groups.k,
                              zero_level)
