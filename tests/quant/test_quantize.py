"""The code -> value rule and the round-to-nearest quantizers."""

import numpy as np
import pytest

from edgepet.quant import QuantizedTensor, quantize


def test_symmetric_codes_are_odd_multiples_of_the_scale():
    qt = QuantizedTensor(
        codes=np.array([[0, 1, 2, 3]], np.uint8),
        scales=np.array([[0.5]], np.float32),
        zero_points=None,
        bits=2,
        group_size=4,
        symmetric=True,
    )
    np.testing.assert_array_equal(qt.dequantize(), [[-1.5, -0.5, 0.5, 1.5]])


def test_asymmetric_and_ternary_rules():
    asym = QuantizedTensor(
        np.array([[0, 3]], np.uint8), np.array([[2.0]], np.float32),
        np.array([[1.5]], np.float32), 2, 2, False,
    )
    np.testing.assert_array_equal(asym.dequantize(), [[-3.0, 3.0]])
    tern = QuantizedTensor(
        np.array([[0, 1, 2]], np.uint8), np.array([[0.25]], np.float32), None, "ternary", 3, True
    )
    np.testing.assert_array_equal(tern.dequantize(), [[-0.25, 0.0, 0.25]])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, "ternary"])
def test_rounding_error_is_bounded_per_bit_width(bits):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256), dtype=np.float32)
    err = np.linalg.norm(quantize(w, bits, 64).dequantize() - w) / np.linalg.norm(w)
    limit = {1: 0.62, 2: 0.55, 3: 0.22, 4: 0.11, "ternary": 0.52}[bits]
    assert err < limit


def test_constant_groups_are_exact_to_fp16_scale_precision():
    w = np.full((2, 64), 2.5, np.float32)
    for bits in (1, 2, 3, 4):
        for symmetric in (True, False):
            # Scales are stored as fp16: 2.5 / 7 is off by up to half an fp16 ulp.
            np.testing.assert_allclose(quantize(w, bits, 32, symmetric).dequantize(), w,
                                       rtol=2**-11)


def test_scales_and_zero_points_are_fp16_values_and_dequantize_uses_them():
    rng = np.random.default_rng(9)
    qt = quantize(rng.standard_normal((8, 64), dtype=np.float32), 2, 32, symmetric=False)
    for values in (qt.scales, qt.zero_points):
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, values.astype(np.float16).astype(np.float32))
    s = np.repeat(qt.scales, 32, axis=1)
    z = np.repeat(qt.zero_points, 32, axis=1)
    np.testing.assert_array_equal(qt.dequantize(), s * (qt.codes - z))


def test_scales_beyond_fp16_are_refused():
    codes = np.zeros((1, 32), np.uint8)
    with pytest.raises(ValueError, match="stored as fp16"):
        QuantizedTensor(codes, np.array([[1e6]], np.float32), None, 2, 32, True)


@pytest.mark.parametrize("bits,symmetric,expected", [
    (2, True, 2.25), (2, False, 2.5), (1, True, 1.25), (4, True, 4.25), ("ternary", True, 2.25),
])
def test_bits_per_weight_counts_codes_scales_and_zero_points(bits, symmetric, expected):
    w = np.random.default_rng(1).standard_normal((64, 256), dtype=np.float32)
    qt = quantize(w, bits, 64, symmetric)
    assert qt.bits_per_weight == pytest.approx(expected)


def test_per_row_is_group_size_k():
    qt = quantize(np.ones((3, 100), np.float32), 2, "per-row")
    assert qt.group_size == 100 and qt.scales.shape == (3, 1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bits": 5}, "bits=5 is not supported"),
        ({"bits": 2, "group_size": 48}, "not a multiple of 32"),
        ({"bits": 2, "group_size": 0}, "must be positive"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(np.ones((4, 128), np.float32), **kwargs)


def test_non_finite_weights_are_rejected_with_their_position():
    w = np.ones((4, 64), np.float32)
    w[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value at \(2, 5\)"):
        quantize(w, 2, 32)


def test_quantized_tensor_is_immutable():
    qt = quantize(np.ones((4, 64), np.float32), 2, 32)
    for array in (qt.codes, qt.scales):
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1


def test_zero_level_codes_have_a_zero_and_one_more_step_below_it():
    """s * (q - 2^(b-1)): the grid of Q4_0 and ONNX Runtime's symmetric MatMulNBits."""
    qt = QuantizedTensor(np.array([[0, 1, 2, 3]], np.uint8), np.array([[0.5]], np.float32),
                         None, 2, 4, True, zero_level=True)
    np.testing.assert_array_equal(qt.dequantize(), [[-1.0, -0.5, 0.0, 0.5]])
    assert qt.bits_per_weight == 2 + 16 / 4  # no zero points stored


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_zero_level_quantize_keeps_each_groups_largest_weight_of_either_sign(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    w[0, :64] = -w[0, :64] ** 2  # largest magnitude negative in one group...
    w[1, :64] = w[1, :64] ** 2   # ...and positive in another: the scale takes its sign
    w[2, 64:] = 0.0              # a zero group: zero weights, exactly
    qt = quantize(w, bits, 64, zero_level=True)
    assert qt.zero_level and qt.zero_points is None and qt.symmetric
    v = qt.dequantize()
    groups, back = w.reshape(16, 2, 64), v.reshape(16, 2, 64)
    at = np.abs(groups).argmax(axis=2)[..., None]
    largest = np.take_along_axis(groups, at, 2)
    np.testing.assert_allclose(np.take_along_axis(back, at, 2), largest, rtol=1e-3)  # fp16 scale
    assert (qt.scales[0, 0] > 0) and (qt.scales[1, 0] < 0)
    np.testing.assert_array_equal(v[2, 64:], 0.0)
    # Every weight within half a step of the grid, except where the grid ends (the far
    # side holds 2^(b-1) - 1 steps): there the clip is the error.
    step = np.abs(np.repeat(qt.scales, 64, axis=1))
    inside = np.abs(w) <= (2 ** (bits - 1) - 1) * step
    assert np.all(np.abs(v - w)[inside] <= 0.5 * step[inside] * (1 + 1e-3))


@pytest.mark.parametrize("kwargs", [{"bits": 1}, {"bits": "ternary"},
                                    {"bits": 4, "symmetric": False}])
def test_zero_level_is_refused_where_it_means_nothing(kwargs):
    with pytest.raises(ValueError, match="zero_level codes are symmetric 2-, 3- or 4-bit"):
        quantize(np.ones((4, 64), np.float32), group_size=32, zero_level=True, **kwargs)
    bits = kwargs["bits"]
    with pytest.raises(ValueError, match="zero_level codes are symmetric"):
        QuantizedTensor(np.zeros((1, 4), np.uint8), np.ones((1, 1), np.float32),
                        None if kwargs.get("symmetric", True) else np.ones((1, 1), np.float32),
                        bits, 4, kwargs.get("symmetric", True), zero_level=True)
