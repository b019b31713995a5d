"""The kernels' numerical edge cases, against the error model of docs/operator.md.

Every kernel this CPU runs (and the reference) is attacked with NaN and infinities,
tiny, subnormal and huge activations, and all-zero and constant weight groups, and a
fuzz test mixes them over random shapes and formats. The error model checked is the
documented one: per output, ``|y - x @ dequantize().T|`` is at most
``sum_groups s * (2^b - 1) * sum_blocks step * quads`` (``step`` = the block's largest
quad magnitude / 127) plus float rounding for the LUT path (1-2 bits, ternary), and
``sum_groups s * (2^b - 1) * sum_blocks step_a * inputs`` (``step_a`` = the block's largest
activation magnitude / 127) for the 3- and 4-bit dot path; a row holding a NaN or an infinity
gives NaN in every output, and every other row is unaffected.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from edgepet import kernels
from edgepet.quant import quantize

KERNELS = kernels.available_kernels()
BITS = [1, 2, 3, 4, "ternary"]
FORMATS = [(b, s) for b in BITS for s in (True, False) if not (b == "ternary" and not s)]


def table_block(k: int, group_size: int) -> int:
    """Inputs sharing one table scale (kernel.h, table_block)."""
    return 64 if group_size >= k or group_size % 64 == 0 else 32


def lut_error_bound(x: np.ndarray, qt) -> np.ndarray:
    """[M, N] bound on |y - x @ w.T| of docs/operator.md ("Error"), plus float rounding."""
    n, k = qt.shape
    m = x.shape[0]
    x64 = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    k8 = -(-k // 8) * 8
    padded = np.zeros((m, k8))
    padded[:, :k] = x64
    quad_mags = np.abs(padded).reshape(m, -1, 4).sum(axis=2)  # [M, quads]
    block = table_block(k, qt.group_size)
    levels = (1 << qt.storage_bits) - 1
    if qt.storage_bits in (3, 4) and qt.bits != "ternary":
        # The dot path: every quad stands for 4 inputs of its block's activation step, so
        # the loop below sums s * (2^b - 1) * step_a * inputs.
        for b0 in range(0, k8, block):
            top = np.abs(padded[:, b0:b0 + block]).max(axis=1, keepdims=True)
            quad_mags[:, b0 // 4:(b0 + block) // 4] = 4 * top
    bound = np.zeros((m, n))
    w = qt.dequantize().astype(np.float64)
    groups = qt.scales.shape[1]
    for g in range(groups):
        g0 = g * qt.group_size
        g1 = k8 if g == groups - 1 else (g + 1) * qt.group_size  # the last takes the padding
        blocks = 0.0
        for b0 in range(g0, g1, block):
            q0, q1 = b0 // 4, min(g1, b0 + block) // 4
            step = quad_mags[:, q0:q1].max(axis=1) / 127.0
            blocks = blocks + step * (q1 - q0)
        s = qt.scales[:, g].astype(np.float64)
        # Subnormal steps and outputs round to 2^-149: a few of those per block.
        tiny = 2.0**-128 * ((g1 - g0) / block + 1)
        bound += np.outer(blocks, s * levels) + tiny * s * levels
    return bound + 1e-5 * (np.abs(x64) @ np.abs(w).T)


def check_against_model(y: np.ndarray, x: np.ndarray, qt, what: str) -> None:
    """Non-finite rows are all NaN; the others are within the error model."""
    bad_rows = ~np.isfinite(x).all(axis=1)
    assert np.isnan(y[bad_rows]).all(), f"{what}: a row with NaN/inf has a non-NaN output"
    good = ~bad_rows
    if not good.any():
        return
    exact = x[good].astype(np.float64) @ qt.dequantize().astype(np.float64).T
    err = np.abs(y[good] - exact)
    bound = lut_error_bound(x[good], qt)
    assert np.isfinite(y[good]).all(), f"{what}: finite row gave a non-finite output"
    over = err > bound
    assert not over.any(), f"{what}: error {err[over].max():.3g} > bound {bound[over].min():.3g}"


def _weights(rng, n, k):
    return rng.standard_normal((n, k)).astype(np.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bits,symmetric", FORMATS)
def test_nan_and_inf_make_every_output_of_their_row_nan(kernel, special, bits, symmetric):
    rng = np.random.default_rng(0)
    qt = quantize(_weights(rng, 40, 200), bits, 64, symmetric)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    clean = kernels.lut_matmul(x, qt, kernel=kernel)
    for at in (0, 63, 64, 199):
        dirty = x.copy()
        dirty[1, at] = special
        y = kernels.lut_matmul(dirty, qt, kernel=kernel)
        assert np.isnan(y[1]).all()
        np.testing.assert_array_equal(y[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("magnitude", [1e-37, 1e-38, 1e-40, 1e-44, 1e30])
@pytest.mark.parametrize("bits,symmetric", FORMATS)
def test_tiny_subnormal_and_huge_activations_stay_within_the_error_model(
        kernel, magnitude, bits, symmetric):
    """127 / max once overflowed below ~3.7e-37: results up to 57x too large."""
    rng = np.random.default_rng(1)
    qt = quantize(_weights(rng, 33, 150), bits, 32, symmetric)
    x = (rng.standard_normal((2, 150)) * magnitude).astype(np.float32)
    check_against_model(kernels.lut_matmul(x, qt, kernel=kernel), x, qt, kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group", [32, 64, "per-row"])
def test_all_zero_asymmetric_weights_give_exactly_zero(kernel, bits, group):
    """Once up to 0.22 for unit inputs at 2 bits: the offset term's rounding."""
    qt = quantize(np.zeros((40, 200), np.float32), bits, group, symmetric=False)
    x = np.ones((3, 200), np.float32)
    x[1] = np.random.default_rng(2).standard_normal(200)
    y = kernels.lut_matmul(x, qt, kernel=kernel)
    assert (y == 0).all(), float(np.abs(y).max())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("group", [32, 64, "per-row"])
def test_ternary_zero_codes_give_exactly_zero_whatever_the_scale(kernel, group):
    """quantize gives an all-zero ternary group the scale 0, which hides the offset term's
    rounding; codes 1 (the zero weight) under a non-zero scale must give 0 as well."""
    rng = np.random.default_rng(3)
    qt = quantize(_weights(rng, 40, 200), "ternary", group)
    codes = qt.codes.copy()
    codes[5] = 1
    codes[30:] = 1
    qt = dataclasses.replace(qt, codes=codes)
    assert (qt.scales > 0).all() and (qt.dequantize()[[5, 30, 39]] == 0).all()
    y = kernels.lut_matmul(rng.standard_normal((2, 200)).astype(np.float32), qt, kernel=kernel)
    assert (y[:, [5, *range(30, 40)]] == 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group", [32, "per-row"])
def test_constant_asymmetric_groups_give_the_constant_times_the_sum(kernel, bits, group):
    rng = np.random.default_rng(4)
    constants = rng.uniform(-2, 2, size=(40, 1)).astype(np.float32)
    qt = quantize(np.repeat(constants, 200, axis=1), bits, group, symmetric=False)
    w = qt.dequantize()
    assert (w == w[:, :1]).all()  # the quantizer keeps a constant exactly
    x = rng.standard_normal((3, 200)).astype(np.float32)
    y = kernels.lut_matmul(x, qt, kernel=kernel)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    # Float rounding of the sums only (the table rounding would be ~1e-2 of |w| |x|).
    np.testing.assert_allclose(y, exact, rtol=0, atol=1e-6 * float(np.abs(exact).max()) + 1e-6)


def fuzz_cases(count: int, seed: int):
    """Random shapes, formats, groups, magnitudes (NaN, inf, 1e-38, 1e30, mixed) and weights
    with all-zero and constant rows."""
    rng = np.random.default_rng(seed)
    magnitudes = [1.0, 1e-38, 1e-40, 1e30, "mixed"]
    for case in range(count):
        m, n, k = int(rng.integers(1, 6)), int(rng.integers(1, 70)), int(rng.integers(1, 300))
        bits = BITS[int(rng.integers(len(BITS)))]
        symmetric = bits == "ternary" or bool(rng.integers(2))
        group = [32, 64, 96, 128, "per-row"][int(rng.integers(5))]
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[rng.random(n) < 0.15] = 0.0
        constant = rng.random(n) < 0.15
        w[constant] = rng.uniform(-1, 1, size=(int(constant.sum()), 1))
        magnitude = magnitudes[int(rng.integers(len(magnitudes)))]
        if magnitude == "mixed":
            scale = 10.0 ** rng.uniform(-40, 30, size=(m, k))
        else:
            scale = magnitude
        x = (rng.standard_normal((m, k)) * scale).astype(np.float32)
        for _ in range(int(rng.integers(0, 3))):
            x[rng.integers(m), rng.integers(k)] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
        yield case, x, quantize(w, bits, group, symmetric)


FUZZ_CASES = 150


def test_fuzz_every_kernel_within_the_error_model_and_non_finite_propagates():
    ran = 0
    for case, x, qt in fuzz_cases(FUZZ_CASES, seed=2026):
        zero_rows = ~qt.dequantize().any(axis=1)
        for kernel in KERNELS:
            what = f"case {case} kernel {kernel} bits={qt.bits} group={qt.group_size} " \
                   f"symmetric={qt.symmetric} shape={x.shape}x{qt.shape}"
            y = kernels.lut_matmul(x, qt, kernel=kernel)
            check_against_model(y, x, qt, what)
            finite_rows = np.isfinite(x).all(axis=1)
            assert (y[np.ix_(finite_rows, zero_rows)] == 0).all(), what
            ran += 1
    assert ran == FUZZ_CASES * len(KERNELS)


@pytest.mark.parametrize("bits,symmetric", FORMATS)
def test_every_kernel_gives_the_same_result_on_unusual_inputs(bits, symmetric):
    """Tables are built bit for bit alike (tables.h), so kernels agree to float rounding
    of the epilogue on tiny, huge and non-finite inputs too."""
    rng = np.random.default_rng(5)
    qt = quantize(_weights(rng, 50, 260), bits, 64, symmetric)
    x = rng.standard_normal((4, 260)).astype(np.float32)
    x[0] *= 1e-39
    x[1] *= 1e30
    x[2, 100] = np.nan
    ref = kernels.lut_matmul(x, qt, kernel="reference")
    assert np.isnan(ref[2]).all()
    for kernel, row in itertools.product(KERNELS, [0, 1, 3]):
        y = kernels.lut_matmul(x, qt, kernel=kernel)
        assert np.isnan(y[2]).all()
        np.testing.assert_allclose(y[row], ref[row], rtol=1e-5,
                                   atol=1e-5 * float(np.abs(ref[row]).max()))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128, "per-row"])
@pytest.mark.parametrize("m", [1, 32])
def test_3bit_dot_path_matches_exact_product_and_reference_on_every_kernel(m, group, symmetric):
    """3-bit codes (quartets of pair values, op ABI 4): K odd, below a quad, a quad pair
    short of a quartet, not a multiple of the group; every kernel within the dot path's
    error model and with the reference to float rounding."""
    rng = np.random.default_rng(hash((m, str(group), symmetric)) % 2**32)
    for k in (1, 7, 24, 129, 200):
        qt = quantize(_weights(rng, 45, k), 3, group, symmetric)
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = kernels.lut_matmul(x, qt, kernel="reference")
        for kernel in KERNELS:
            y = kernels.lut_matmul(x, qt, kernel=kernel)
            check_against_model(y, x, qt, f"3-bit {kernel} m={m} k={k} group={group}")
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
