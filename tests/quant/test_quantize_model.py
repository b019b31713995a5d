"""Quantizing a whole model: layer selection, per-layer report, fake quantization."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgepet.quant import quantize_model, select_linear_layers

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 64)
        self.block = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64))
        self.head = nn.Linear(64, 20)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)))


def batches():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 20, (4, 8), generator=gen) for _ in range(3)]


def test_default_selection_skips_the_embedding_and_the_head():
    assert select_linear_layers(Net()) == ["block.0", "block.2"]


def test_selection_can_take_the_head_or_skip_layers():
    assert select_linear_layers(Net(), ["block.0", "head"]) == ["block.0", "head"]
    assert select_linear_layers(Net(), skip=["2"]) == ["block.0"]
    with pytest.raises(ValueError, match="matches no linear layer"):
        select_linear_layers(Net(), ["q_proj"])


def test_quantize_model_returns_one_quantized_tensor_per_layer_and_leaves_the_model():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize_model(model, bits=2, group_size=32)
    assert list(result.weights) == ["block.0", "block.2"]
    assert result.weights["block.0"].shape == (96, 64)
    assert result.weights["block.0"].bits == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert result.nbytes() == sum(qt.nbytes_packed() for qt in result.weights.values())


def test_apply_to_writes_the_dequantized_weights():
    model = Net()
    result = quantize_model(model, bits="ternary", group_size=32)
    result.apply_to(model)
    w = model.block[0].weight.detach().numpy()
    assert np.array_equal(w, result.weights["block.0"].dequantize())


def test_search_with_calibration_reports_output_errors_next_to_rtn():
    model = Net()
    result = quantize_model(model, bits=2, group_size=32, method="search", calibration=batches())
    table = result.table()
    assert "| block.0 | 96×64 | 2 | 32 |" in table
    for row in result.report:
        assert row.error.output_rel is not None and row.rtn_error is not None
        assert row.error.output_mse <= row.rtn_error.output_mse * 1.05


def test_rtn_with_calibration_reports_output_errors():
    result = quantize_model(Net(), bits=4, calibration=batches())
    assert all(r.error.output_rel is not None and r.rtn_error is None for r in result.report)


def test_merged_pet_layers_are_quantized_through_their_base():
    from edgepet import pet

    model = Net()
    pet.apply(model, "lora", r=2)
    pet.merge(model)
    assert list(quantize_model(model, bits=4).weights) == ["block.0.base", "block.2.base"]


def test_bad_settings_name_the_layer():
    with pytest.raises(ValueError, match="quantizing layer 'block.0' 96×64: group_size=48"):
        quantize_model(Net(), bits=4, group_size=48)
    with pytest.raises(ValueError, match="method='gptq' is unknown"):
        quantize_model(Net(), method="gptq")


def test_edgepet_quant_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import edgepet.quant; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("method", ["rtn", "search"])
def test_zero_level_codes_for_a_whole_model(method):
    result = quantize_model(Net(), bits=3, group_size=32, method=method, zero_level=True,
                            calibration=batches())
    assert all(qt.zero_level and qt.zero_points is None for qt in result.weights.values())
    for row in result.report:
        assert row.rtn_error is None or row.error.output_mse <= row.rtn_error.output_mse * 1.05
