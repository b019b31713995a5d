"""GPTQ: lower calibration-weighted output error than rounding, same code -> value rule."""

import numpy as np
import pytest

from edgepet.quant import QuantizedTensor, quantize
from edgepet.quant.gptq import gptq_quantize, hessian, output_error


def correlated_inputs(k=160, m=1024, factors=12, seed=1):
    """Inputs as a trained layer sees them: a few shared factors plus a little noise."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((factors, k))
    return (rng.standard_normal((m, factors)) @ mix + 0.1 * rng.standard_normal((m, k))
            ).astype(np.float32)


def weight(n=48, k=160, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, k)) / np.sqrt(k)).astype(
        np.float32)


def measured_error(w, qt, x):
    """||X (W - Q)^T|| / ||X W^T|| computed from X itself, not from H."""
    return np.linalg.norm(x @ (w - qt.dequantize()).T) / np.linalg.norm(x @ w.T)


CASES = [(2, False, 32), (2, True, 64), (3, False, 32), (4, False, 64), (4, True, "per-row"),
         (1, True, 32), ("ternary", True, 64)]


@pytest.mark.parametrize(("bits", "symmetric", "group_size"), CASES)
def test_gptq_lowers_the_calibration_weighted_error_against_rtn(bits, symmetric, group_size):
    w, x = weight(), correlated_inputs()
    rtn = quantize(w, bits, group_size, symmetric)
    gptq = gptq_quantize(w, hessian(x), bits, group_size, symmetric)
    assert measured_error(w, gptq, x) < 0.8 * measured_error(w, rtn, x)


@pytest.mark.parametrize(("bits", "symmetric", "group_size"), CASES)
def test_gptq_codes_are_a_quantized_tensor_of_the_asked_kind(bits, symmetric, group_size):
    w, x = weight(k=150), correlated_inputs(k=150)  # a partial last group
    qt = gptq_quantize(w, hessian(x), bits, group_size, symmetric)
    rtn = quantize(w, bits, group_size, symmetric)
    assert isinstance(qt, QuantizedTensor)
    assert (qt.bits, qt.group_size, qt.symmetric) == (rtn.bits, rtn.group_size, rtn.symmetric)
    assert qt.scales.shape == rtn.scales.shape
    assert int(qt.codes.max()) <= qt.max_code


def test_gptq_error_helper_agrees_with_the_error_measured_on_inputs():
    w, x = weight(), correlated_inputs()
    qt = gptq_quantize(w, hessian(x), 2, 32, False)
    assert output_error(w, qt.dequantize(), hessian(x)) == pytest.approx(
        measured_error(w, qt, x), rel=1e-4)


def test_gptq_with_clip_search_is_also_better_than_rtn():
    w, x = weight(), correlated_inputs()
    qt = gptq_quantize(w, hessian(x), 2, 32, False, clip_search=True)
    assert measured_error(w, qt, x) < 0.8 * measured_error(w, quantize(w, 2, 32, False), x)


def test_gptq_survives_inputs_that_never_fire():
    w, x = weight(), correlated_inputs()
    x[:, 7] = 0.0  # a dead input: H has a zero row and column
    qt = gptq_quantize(w, hessian(x), 2, 32, False)
    assert np.isfinite(qt.dequantize()).all()


def test_gptq_refuses_a_hessian_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"expected \(160, 160\)"):
        gptq_quantize(weight(), np.eye(100), 2, 32, False)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_zero_level_codes_beat_their_rtn_and_keep_the_rule(bits):
    w, x = weight(), correlated_inputs()
    rtn = quantize(w, bits, 32, zero_level=True)
    qt = gptq_quantize(w, hessian(x), bits, 32, zero_level=True)
    assert qt.zero_level and qt.zero_points is None and qt.symmetric
    assert measured_error(w, qt, x) < 0.8 * measured_error(w, rtn, x)
