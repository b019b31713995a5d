"""Calibrated quantization: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers").

Round-to-nearest moves every weight on its own; GPTQ rounds the columns of ``W`` ``[N, K]``
one after another and spreads each column's rounding error over the columns not yet
rounded, weighted by the inverse of ``H = X^T X`` (``X``: the layer's calibration inputs),
so that the output error ``||X (W - Q)^T||`` rather than the weight error is small:

* ``H`` is dampened (``damp`` times its mean diagonal added to the diagonal) so that it
  inverts even when some inputs never vary;
* the update uses the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``): after
  rounding column ``j`` with error ``e = (w_j - q_j) / U_jj``, the remaining columns of the
  row move by ``-e * U_j,j+1:``;
* updates are lazy: inside a block of columns they are applied one column at a time, to the
  columns after the block once per block (one matrix product);
* a group's scale (and zero point) is fitted, with the rules of
  :func:`edgepet.quant.quantize` (or by :func:`edgepet.quant.search_quantize` with
  ``clip_search``), when the first column of the group is reached — to the group's weights
  *as updated by then*, which is what lets later groups absorb earlier errors.

Codes and values follow :mod:`edgepet.quant.tensor` (the one code -> value rule): the
column's values are computed from the stored (fp16-rounded) scales, so the returned
:class:`QuantizedTensor` dequantizes to exactly the values the error feedback used.
Columns are taken in their natural order (no "act-order"): groups stay contiguous along K,
as the LUT kernels store them.
"""

from __future__ import annotations

import numpy as np

from edgepet.quant.rtn import quantize
from edgepet.quant.search import search_quantize
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

#: Dampening: this fraction of H's mean diagonal is added to its diagonal (the paper's 1 %).
DEFAULT_DAMP = 0.01
#: Columns per lazy-update block (the paper's 128; rounded to whole groups).
DEFAULT_BLOCK = 128


def hessian(x: np.ndarray) -> np.ndarray:
    """``X^T X / M`` (float64 ``[K, K]``) of calibration inputs ``x`` ``[..., K]``."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    if x.shape[0] == 0:
        raise ValueError("no calibration inputs: H needs at least one row of X")
    return (x.T @ x).astype(np.float64) / x.shape[0]


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """Relative calibration-weighted error ``||X (W - Q)^T|| / ||X W^T||`` from ``H``."""
    w = np.asarray(w, np.float64)
    d = w - np.asarray(q, np.float64)
    num = float(np.sum((d @ h) * d))
    den = float(np.sum((w @ h) * w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else float(np.sqrt(max(num, 0.0)))


def _inverse_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper ``U`` with ``U^T U = (H + damp * mean(diag H) I)^-1`` (float32)."""
    h = np.array(h, dtype=np.float64, copy=True)
    k = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0  # an input that never fires: its column's error goes nowhere
    mean_diag = float(np.mean(np.diag(h)))
    # With the exchange matrix P and P H P = L L^T: H^-1 = (P L^-T P)(P L^-1 P), so the
    # upper factor is P L^-1 P -- one Cholesky and one triangular inverse.
    flipped = h[::-1, ::-1]
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(flipped + (damp * 10 ** attempt) * mean_diag * np.eye(k))
            break
        except np.linalg.LinAlgError:
            continue
    else:
        raise ValueError("the calibration Hessian is not positive definite even after "
                         "dampening — the calibration inputs hold NaN or inf")
    inv_lower = np.tril(np.linalg.inv(lower))
    return np.ascontiguousarray(inv_lower[::-1, ::-1], dtype=np.float32)


def _block_size(gs: int, block: int) -> int:
    """Columns per block: whole groups, about ``block`` of them (a group never straddles)."""
    return gs if gs >= block else (block // gs) * gs


def _group_params(w: np.ndarray, bits: Bits, symmetric: bool, clip_search: bool,
                  h_diag: np.ndarray, zero_level: bool = False) -> QuantizedTensor:
    """One group's scales (and zero points) ``[N, 1]``, from its current weights."""
    width = w.shape[1]
    if not clip_search:
        return quantize(w, bits, width, symmetric, zero_level)
    # Weighted by H's diagonal: X = diag(sqrt(h)) gives the search an error sum_i h_i d_i^2.
    x = np.diag(np.sqrt(np.maximum(h_diag, 0.0))).astype(np.float32)
    return search_quantize(w, bits, width, symmetric, activations=x, grid=10, refits=1,
                           zero_level=zero_level)


def gptq_quantize(
    w: np.ndarray,
    h: np.ndarray,
    bits: Bits = 4,
    group_size: int | str | None = 64,
    symmetric: bool = True,
    *,
    damp: float = DEFAULT_DAMP,
    block: int = DEFAULT_BLOCK,
    clip_search: bool = False,
    zero_level: bool = False,
) -> QuantizedTensor:
    """Quantize ``w`` ``[N, K]`` with GPTQ for inputs whose Gram matrix is ``h`` ``[K, K]``.

    Args:
        w, bits, group_size, symmetric: as for :func:`edgepet.quant.quantize`.
        h: ``X^T X`` (any positive scale) of the layer's calibration inputs ``X`` ``[M, K]``;
            :func:`hessian` makes it.
        damp: fraction of ``mean(diag(h))`` added to the diagonal before inverting.
        block: columns per lazy update (rounded to whole groups).
        clip_search: fit each group's scale/zero point with the clipping search (weighted
            by ``diag(h)``) instead of the group's min/max.
        zero_level: symmetric codes with a zero level (as :func:`edgepet.quant.quantize`).

    Returns a :class:`QuantizedTensor` of the same kind as RTN's (bits, group size,
    symmetry), whose :meth:`~QuantizedTensor.dequantize` is exactly the values used.
    """
    check_bits(bits)
    w = np.array(w, dtype=np.float32, copy=True)
    if w.ndim != 2 or 0 in w.shape or not np.isfinite(w).all():
        raise ValueError(f"weight must be a finite non-empty 2-D [N, K] array, got {w.shape}")
    n, k = w.shape
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (k, k):
        raise ValueError(f"the Hessian is {h.shape}, expected ({k}, {k}) for K={k}")
    if not np.isfinite(h).all():
        raise ValueError("the calibration Hessian holds NaN or inf")
    gs = resolve_group_size(group_size, k)
    if bits == "ternary":
        symmetric = True
    u = _inverse_factor(h, damp)
    h_diag = np.diag(h)
    g = num_groups(k, gs)
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, g), np.float32)
    zeros = None if symmetric else np.zeros((n, g), np.float32)
    step = _block_size(gs, block)
    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        wb = w[:, b0:b1].copy()
        errors = np.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        s = z = None
        for i in range(b1 - b0):
            col = b0 + i
            if col % gs == 0:
                end = min(i + gs, b1 - b0)
                params = _group_params(wb[:, i:end], bits, symmetric, clip_search,
                                       h_diag[col:col + end - i], zero_level)
                s = storage_values(params.scales[:, 0])
                scales[:, col // gs] = s
                if zeros is not None:
                    z = storage_values(params.zero_points[:, 0], "zero_points")
                    zeros[:, col // gs] = z
            column = wb[:, i]
            c = nearest_codes(column[:, None], s, z, bits, zero_level)
            codes[:, col] = c[:, 0]
            value = code_values(c[:, 0], s, z, bits, zero_level)
            err = (column - value) / u[col, col]
            wb[:, i:] -= err[:, None] * ub[i, i:][None, :]
            errors[:, i] = err
        if b1 < k:
            w[:, b1:] -= errors @ u[b0:b1, b1:]
    return QuantizedTensor(codes=codes, scales=scales, zero_points=zeros, bits=bits,
                           group_size=gs, symmetric=symmetric, zero_level=zero_level)


__all__ = ["DEFAULT_DAMP", "gptq_quantize", "hessian", "output_error"]
