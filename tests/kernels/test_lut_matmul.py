"""LUT kernels from Python: every format against the exact product.

Tolerance: the kernels round each activation table to int8 with one scale per 32
inputs, so the product carries a relative error of about 0.5 % on Gaussian data
(docs/operator.md). Tests allow 1.5 % (relative Frobenius norm), which a wrong
plane weight, sign or scale exceeds by far.
"""

import itertools

import numpy as np
import pytest

from edgepet import kernels
from edgepet.quant import quantize

LUT_TOLERANCE = 0.015
BITS = [1, 2, 3, 4, "ternary"]
GROUPS = [32, 64, 128, "per-row"]
# K and N deliberately not multiples of anything convenient.
SHAPES = [(1, 37, 1000), (2, 100, 333), (7, 65, 515), (64, 33, 200)]


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def cases():
    for i, (bits, group, symmetric, with_bias) in enumerate(
        itertools.product(BITS, GROUPS, [True, False, "zero-level"], [False, True])
    ):
        if bits in ("ternary", 1) and symmetric == "zero-level":
            continue
        if bits == "ternary" and not symmetric:
            continue
        yield bits, group, symmetric, with_bias, SHAPES[i % len(SHAPES)]


@pytest.mark.parametrize("bits,group,symmetric,with_bias,shape", list(cases()))
def test_every_format_matches_exact_product(bits, group, symmetric, with_bias, shape):
    m, n, k = shape
    rng = np.random.default_rng(abs(hash((str(bits), str(group), symmetric, with_bias))) % 2**32)
    zero_level = symmetric == "zero-level"
    qt = quantize(rng.standard_normal((n, k), dtype=np.float32), bits, group,
                  bool(symmetric), zero_level=zero_level)
    assert qt.zero_level == zero_level
    x = rng.standard_normal((m, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    exact = x @ qt.dequantize().T + (0 if bias is None else bias)
    for kernel in kernels.available_kernels():
        y = kernels.lut_matmul(x, qt, bias=bias, kernel=kernel)
        assert y.shape == (m, n)
        assert rel_err(y, exact) < LUT_TOLERANCE, kernel


VECTOR_KERNELS = [k for k in kernels.available_kernels() if k != "reference"]


@pytest.mark.skipif(not VECTOR_KERNELS, reason="no vector kernel for this CPU")
@pytest.mark.parametrize("bits", BITS)
def test_vector_kernels_agree_with_reference_to_float_rounding(bits):
    rng = np.random.default_rng(1)
    symmetric = bits in ("ternary", 1)
    qt = quantize(rng.standard_normal((70, 1001), dtype=np.float32), bits, 64, symmetric)
    x = rng.standard_normal((3, 1001), dtype=np.float32)
    ref = kernels.lut_matmul(x, qt, kernel="reference")
    for name in VECTOR_KERNELS:
        assert rel_err(kernels.lut_matmul(x, qt, kernel=name), ref) < 1e-5, name


@pytest.mark.parametrize("bits", BITS)
def test_auto_kernel_agrees_with_reference_for_one_row_and_row_pairs(bits):
    # "auto" may take a different kernel per bit width and for one row or two rows
    # sharing the codes (M=3: one pair, then one row alone).
    rng = np.random.default_rng(5)
    qt = quantize(rng.standard_normal((70, 1001), dtype=np.float32), bits, 64, bits != 4)
    for m in (1, 3):
        x = rng.standard_normal((m, 1001), dtype=np.float32)
        ref = kernels.lut_matmul(x, qt, kernel="reference")
        assert rel_err(kernels.lut_matmul(x, qt, kernel="auto"), ref) < 1e-5, m


def test_edgepet_kernel_in_the_environment_overrides_auto(monkeypatch):
    rng = np.random.default_rng(6)
    qt = quantize(rng.standard_normal((40, 128), dtype=np.float32), 3, 64)
    x = rng.standard_normal((2, 128), dtype=np.float32)
    for name in kernels.available_kernels():
        monkeypatch.setenv("EDGEPET_KERNEL", name)
        np.testing.assert_array_equal(kernels.lut_matmul(x, qt),
                                      kernels.lut_matmul(x, qt, kernel=name))
    monkeypatch.setenv("EDGEPET_KERNEL", "no-such-kernel")
    with pytest.raises(ValueError, match="not available"):
        kernels.lut_matmul(x, qt)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 31, 33])
def test_tiny_and_ragged_k_is_handled(k):
    rng = np.random.default_rng(k)
    qt = quantize(rng.standard_normal((1, k), dtype=np.float32), 4, "per-row")
    x = rng.standard_normal((2, k), dtype=np.float32)
    w = qt.dequantize()
    # Per element, the table rounding is bounded by a fraction of |x| . |w|.
    bound = 0.01 * (np.abs(x) @ np.abs(w).T)
    assert (np.abs(kernels.lut_matmul(x, qt) - x @ w.T) <= bound).all()


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(3)
    qt = quantize(rng.standard_normal((300, 640), dtype=np.float32), 2, 64)
    x = rng.standard_normal((5, 640), dtype=np.float32)
    one = kernels.lut_matmul(x, qt, threads=1)
    np.testing.assert_array_equal(one, kernels.lut_matmul(x, qt, threads=2))
    np.testing.assert_array_equal(one, kernels.lut_matmul(x, qt, threads=3))


def test_leading_dimensions_are_kept():
    rng = np.random.default_rng(4)
    qt = quantize(rng.standard_normal((40, 96), dtype=np.float32), 3, 32)
    x = rng.standard_normal((2, 3, 96), dtype=np.float32)
    y = kernels.lut_matmul(x, qt)
    assert y.shape == (2, 3, 40)
    np.testing.assert_allclose(y[1, 2], kernels.lut_matmul(x[1, 2:3], qt)[0], rtol=1e-6)


def test_zero_rows_give_an_empty_result():
    qt = quantize(np.ones((8, 64), np.float32), 2, 32)
    assert kernels.lut_matmul(np.zeros((0, 64), np.float32), qt).shape == (0, 8)


def test_packed_size_is_half_a_byte_per_plane_per_weight_in_whole_tiles():
    qt = quantize(np.ones((33, 10), np.float32), 3, "per-row")
    # 2 tiles of 32 rows x 4 quads (K padded to 16) x 16 bytes per plane x 3 planes
    assert kernels.pack(qt).shape == (2 * 4 * 16 * 3,)


def test_3bit_codes_pack_in_quartets_of_192_bytes_per_tile():
    """3 bits, op ABI 4: K padded to 16, three 64-byte vectors per tile and 16 inputs."""
    qt = quantize(np.ones((33, 20), np.float32), 3, "per-row")
    assert kernels.pack(qt).shape == (2 * 2 * 192,)


def test_wrong_input_width_is_a_clear_error():
    qt = quantize(np.ones((8, 64), np.float32), 2, 32)
    with pytest.raises(ValueError, match="last dimension must be K=64"):
        kernels.lut_matmul(np.zeros((1, 63), np.float32), qt)


def test_wrong_bias_is_a_clear_error():
    qt = quantize(np.ones((8, 64), np.float32), 2, 32)
    with pytest.raises(ValueError, match=r"bias has shape \(7,\), expected \(8,\)"):
        kernels.lut_matmul(np.zeros((1, 64), np.float32), qt, bias=np.zeros(7, np.float32))


def test_unknown_kernel_name_is_a_clear_error():
    qt = quantize(np.ones((8, 64), np.float32), 2, 32)
    with pytest.raises(ValueError, match="kernel 'neon' is not available"):
        kernels.lut_matmul(np.zeros((1, 64), np.float32), qt, kernel="neon")


def test_packing_happens_once_per_tensor(monkeypatch):
    qt = quantize(np.ones((40, 64), np.float32), 2, 32)
    calls = []
    real_pack = kernels.pack
    monkeypatch.setattr(kernels, "pack", lambda t: calls.append(t) or real_pack(t))
    x = np.ones((1, 64), np.float32)
    first = kernels.lut_matmul(x, qt)
    np.testing.assert_array_equal(first, kernels.lut_matmul(x, qt))
    assert len(calls) == 1


def test_scales_are_stored_fp16_tile_major_with_zero_padding():
    rng = np.random.default_rng(11)
    qt = quantize(rng.standard_normal((40, 128), dtype=np.float32), 2, 32, symmetric=False)
    scales, zeros = kernels.scales_tiled(qt)
    assert scales.dtype == np.float16 and scales.shape == (2, 4, 32) == zeros.shape
    for r in (0, 31, 32, 39):
        for g in range(4):
            assert scales[r // 32, g, r % 32] == qt.scales[r, g]
            assert zeros[r // 32, g, r % 32] == qt.zero_points[r, g]
    assert not scales[1, :, 8:].any()  # rows 40..63 do not exist


def test_packed_bits_per_weight_includes_layout_padding():
    w = np.random.default_rng(12).standard_normal((64, 256), dtype=np.float32)
    assert kernels.packed_bits_per_weight(quantize(w, 2, 64)) == pytest.approx(2.25)
    # N=40 pads to 64 rows: 64/40 of the bytes of a 40-row tensor.
    w40 = w[:40]
    assert kernels.packed_bits_per_weight(quantize(w40, 2, 64)) == pytest.approx(2.25 * 64 / 40)
