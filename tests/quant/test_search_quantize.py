"""Error-minimizing quantization search: never worse than RTN, same code->value rule."""

import numpy as np
import pytest

from edgepet.quant import QuantizedTensor, quantization_error, quantize, search_quantize

CASES = [(1, True), (1, False), (2, True), (2, False), (3, True), (4, True), (4, False),
         ("ternary", True)]


def heavy_tailed(n=48, k=200, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(df=3, size=(n, k)).astype(np.float32)
    return w


def activations(k=200, m=256, seed=1):
    """Correlated inputs, as layers of a trained network see: 16 factors plus noise."""
    mix = np.random.default_rng(0).standard_normal((16, k))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, 16)) @ mix + 0.1 * rng.standard_normal((m, k))).astype(
        np.float32
    )


def group_errors(w, qt, weights=None):
    d = (w - qt.dequantize()) ** 2
    return d if weights is None else d * weights


@pytest.mark.parametrize(("bits", "symmetric"), CASES)
def test_search_is_never_worse_than_rtn_in_any_group(bits, symmetric):
    w = heavy_tailed()
    rtn = quantize(w, bits, 64, symmetric)
    found = search_quantize(w, bits, 64, symmetric)
    gs = 64
    for g in range(-(-200 // gs)):
        cols = slice(g * gs, (g + 1) * gs)
        e_found = ((w - found.dequantize())[:, cols] ** 2).sum(1)
        e_rtn = ((w - rtn.dequantize())[:, cols] ** 2).sum(1)
        assert np.all(e_found <= e_rtn * (1 + 1e-5) + 1e-9)


@pytest.mark.parametrize(
    ("bits", "symmetric"), [(2, True), (3, True), (4, False), ("ternary", True)]
)
def test_search_lowers_weight_error_on_heavy_tailed_weights(bits, symmetric):
    w = heavy_tailed()
    rtn = quantization_error(w, quantize(w, bits, 64, symmetric)).weight_mse
    found = quantization_error(w, search_quantize(w, bits, 64, symmetric)).weight_mse
    assert found < 0.95 * rtn


@pytest.mark.parametrize(("bits", "symmetric"), [(2, True), (3, False), (4, True)])
def test_search_with_activations_lowers_held_out_output_error(bits, symmetric):
    w, calib, test = heavy_tailed(), activations(), activations(m=1000, seed=9)
    weight_only = search_quantize(w, bits, 64, symmetric)
    output = search_quantize(w, bits, 64, symmetric, activations=calib)
    assert (quantization_error(w, output, test).output_mse
            < quantization_error(w, weight_only, test).output_mse)


@pytest.mark.parametrize(("bits", "symmetric"), CASES)
def test_search_returns_the_same_layout_as_rtn(bits, symmetric):
    w = heavy_tailed(k=100)
    rtn = quantize(w, bits, 64, symmetric)
    found = search_quantize(w, bits, 64, symmetric, activations=activations(k=100))
    assert isinstance(found, QuantizedTensor)
    assert (found.bits, found.group_size, found.symmetric) == (rtn.bits, 64, rtn.symmetric)
    assert found.scales.shape == rtn.scales.shape == (48, 2)  # K=100: a 36-wide tail group
    assert np.all(found.scales >= 0)


def test_search_handles_all_zero_rows_and_per_row_groups():
    w = heavy_tailed(n=4, k=40)
    w[1] = 0.0
    found = search_quantize(w, 3, "per-row", True)
    assert found.group_size == 40
    assert np.array_equal(found.dequantize()[1], np.zeros(40, dtype=np.float32))


def test_quantization_error_reports_weight_and_output_errors():
    w = np.array([[1.0, -1.0], [2.0, 0.0]], dtype=np.float32)
    qt = quantize(w, 1, "per-row", True)  # rows become +-1 and +-1
    err = quantization_error(w, qt, np.eye(2, dtype=np.float32))
    d = w - qt.dequantize()
    assert err.weight_mse == pytest.approx(np.mean(d**2))
    assert err.weight_rel == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w))
    assert err.output_mse == pytest.approx(np.mean(d**2))
    assert quantization_error(w, qt).output_mse is None


def test_activations_with_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match="activations have 7 features, the weight has K=200"):
        search_quantize(heavy_tailed(), 4, 64, True, activations=np.ones((3, 7)))


def test_non_finite_weights_are_refused():
    w = heavy_tailed()
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        search_quantize(w, 4)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_zero_level_search_stays_zero_level_and_never_loses_to_its_rtn(bits):
    w = heavy_tailed()
    rtn = quantize(w, bits, 64, zero_level=True)
    found = search_quantize(w, bits, 64, zero_level=True)
    assert found.zero_level and found.zero_points is None
    for g in range(-(-200 // 64)):
        cols = slice(g * 64, (g + 1) * 64)
        e_found = ((w - found.dequantize())[:, cols] ** 2).sum(1)
        e_rtn = ((w - rtn.dequantize())[:, cols] ** 2).sum(1)
        assert np.all(e_found <= e_rtn * (1 + 1e-5) + 1e-9)
    assert quantization_error(w, found).weight_mse < quantization_error(w, rtn).weight_mse
