"""k-bit adapters: Gaussian codebooks, STE training, binarize into packed codes."""

import math

import numpy as np
import pytest
import torch
from pet_helpers import randomize_pet

from edgepet import pet
from edgepet.pet import PetError
from edgepet.pet.lowbit import LowBitMatrix, PackedMatrix, gaussian_codebook, gaussian_quantize_ste
from edgepet.quant import QuantizedTensor


def test_one_bit_gaussian_codebook_is_plus_minus_sqrt_2_over_pi():
    assert gaussian_codebook(1) == pytest.approx((-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)))


def test_two_bit_gaussian_codebook_is_the_lloyd_max_quantizer():
    assert gaussian_codebook(2) == pytest.approx((-1.5104, -0.4528, 0.4528, 1.5104), abs=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codebooks_are_ascending_and_symmetric(bits):
    levels = np.array(gaussian_codebook(bits))
    assert len(levels) == 2**bits
    assert np.all(np.diff(levels) > 0)
    assert np.allclose(levels, -levels[::-1])


@pytest.mark.parametrize("bits", [0, 5, "ternary", True])
def test_unsupported_adapter_bits_are_refused(tiny, bits):
    with pytest.raises(PetError, match="adapter bits"):
        pet.apply(tiny, "adapter", bits=bits)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_ste_forward_is_mean_plus_std_times_a_level_and_gradient_passes_through(bits):
    torch.manual_seed(0)
    w = torch.randn(16, 24, requires_grad=True)
    q = gaussian_quantize_ste(w, bits)
    mean, std = w.detach().mean(), w.detach().std(unbiased=False)
    levels = torch.tensor(gaussian_codebook(bits))
    nearest = levels[((w.detach() - mean) / std)[..., None].sub(levels).abs().argmin(-1)]
    assert torch.allclose(q.detach(), mean + std * nearest, atol=1e-6)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def _trained_one_bit(tiny, method="adapter", **config):
    pet.apply(tiny, method, bits=1, **config)
    randomize_pet(tiny)
    return tiny


@pytest.mark.parametrize(("method", "config"), [("adapter", {"r": 4}), ("lora", {"r": 4})])
def test_binarize_keeps_the_outputs(tiny, x, method, config):
    _trained_one_bit(tiny, method, **config)
    before = tiny(x)
    pet.binarize(tiny)
    # The frozen 1-bit matrix's scale and zero point are stored as fp16 (LutMatMul ABI 2).
    after = tiny(x)
    assert torch.linalg.norm(after - before) <= 2e-3 * torch.linalg.norm(before)
    assert not any(isinstance(m, LowBitMatrix) for m in tiny.modules())
    assert not any(n.endswith(("_A.weight", "_B.weight", "down.weight", "up.weight"))
                   for n, _ in tiny.named_parameters())


def test_one_bit_matrix_dequantizes_to_exactly_the_forward_weights(tiny, x):
    _trained_one_bit(tiny, r=4)
    pet.binarize(tiny)
    layer = tiny.inp
    qts = layer.quantized_weights()
    assert set(qts) == {"down", "up"}
    for name, qt in qts.items():
        assert isinstance(qt, QuantizedTensor)
        assert torch.equal(getattr(layer, name)(), torch.from_numpy(qt.dequantize()))
    # And the layer's output is built from exactly those weights.
    hidden = torch.relu(x @ torch.from_numpy(qts["down"].dequantize()).T + layer.down_bias)
    expected = layer.base(x) + hidden @ torch.from_numpy(qts["up"].dequantize()).T + layer.up_bias
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_one_bit_quantized_tensor_is_asymmetric_per_row_with_one_scale_and_zero_point(tiny):
    _trained_one_bit(tiny, r=4)
    w = tiny.hidden.down.weight.detach().clone()
    pet.binarize(tiny)
    qt = tiny.hidden.quantized_weights()["down"]
    mean, std = w.mean().item(), w.std(unbiased=False).item()
    s = 2 * math.sqrt(2 / math.pi) * std
    assert (qt.bits, qt.symmetric, qt.group_size, qt.shape) == (1, False, 32, (4, 32))
    # Stored as fp16 (LutMatMul ABI 2): equal to half an fp16 ulp.
    assert np.allclose(qt.scales, s, rtol=2**-11)
    assert np.allclose(qt.zero_points, 0.5 - mean / s, rtol=2**-10, atol=1e-6)
    assert np.array_equal(qt.codes, (w >= mean).numpy().astype(np.uint8))


def test_stored_bytes_are_packed_codes_plus_two_floats_per_matrix(tiny):
    _trained_one_bit(tiny, r=4, bias=False)
    report = pet.binarize(tiny)
    inp = -(-4 * 12 // 8) + 8 + -(-32 * 4 // 8) + 8  # down 4x12, up 32x4
    hidden = -(-4 * 32 // 8) + 8 + -(-48 * 4 // 8) + 8
    assert report.layers == {"inp": inp, "hidden": hidden}
    assert report.total == inp + hidden
    assert pet.stored_bytes(tiny).total == report.total


def test_k_bit_adapters_freeze_to_float_weights_not_quantized_tensors(tiny, x):
    pet.apply(tiny, "adapter", r=4, bits=2)
    randomize_pet(tiny)
    before = tiny(x)
    pet.binarize(tiny)
    assert torch.allclose(tiny(x), before, atol=1e-5)
    with pytest.raises(ValueError, match="unevenly spaced.*dequantized"):
        tiny.inp.quantized_weights()
    weights = tiny.inp.frozen_weights()
    assert torch.equal(tiny.inp.down(), torch.from_numpy(weights["down"]))
    assert len(np.unique(weights["down"])) <= 4


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_packing_keeps_every_code(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(7, 13)).astype(np.uint8)
    packed = PackedMatrix.from_codes(codes, bits, 0.0, 1.0)
    assert np.array_equal(packed.codes(), codes)
    assert packed.stored_bytes() == -(-7 * 13 * bits // 8) + 8


def test_binarize_without_k_bit_matrices_says_what_to_do(tiny):
    pet.apply(tiny, "adapter", r=4)
    with pytest.raises(PetError, match="bits=1"):
        pet.binarize(tiny)
    with pytest.raises(PetError, match="binarize"):
        tiny.inp.quantized_weights()


def test_a_binarized_model_round_trips_through_its_state_dict(tiny, x):
    _trained_one_bit(tiny, r=4)
    pet.binarize(tiny)
    state = tiny.state_dict()
    out = tiny(x)
    torch.manual_seed(5)
    other = type(tiny)()
    other.load_state_dict({k: v for k, v in state.items() if "base" not in k}, strict=False)
    pet.apply(other, "adapter", r=4, bits=1)
    pet.binarize(other)
    other.load_state_dict(state)
    assert torch.equal(other(x), out)


def test_constant_matrix_binarizes_to_its_constant():
    m = LowBitMatrix(torch.full((3, 5), 0.25), bits=1)
    qt = m.packed().quantized_tensor()
    assert np.allclose(qt.dequantize(), 0.25)


def test_a_bfloat16_one_bit_adapter_trains_and_binarizes(tiny, x):
    tiny.to(torch.bfloat16)
    pet.apply(tiny, "adapter", r=4, bits=1)
    randomize_pet(tiny)
    tiny(x.bfloat16()).float().square().mean().backward()
    pet.binarize(tiny)
    qt = tiny.inp.quantized_weights()["down"]
    assert tiny.inp.down().dtype == torch.bfloat16
    assert torch.equal(tiny.inp.down(), torch.from_numpy(qt.dequantize()).bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_bit_adapter_trains_and_binarizes_on_cuda(tiny, x):
    tiny.cuda()
    pet.apply(tiny, "adapter", r=4, bits=1)
    randomize_pet(tiny)
    tiny(x.cuda()).square().mean().backward()
    before = tiny(x.cuda())
    pet.binarize(tiny)
    assert torch.allclose(tiny(x.cuda()), before, atol=1e-5)
    qt = tiny.inp.quantized_weights()["up"]
    assert torch.equal(tiny.inp.up().cpu(), torch.from_numpy(qt.dequantize()))
