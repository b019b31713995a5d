"""The digits example runs end to end (shortened) and prints its tables."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_pet.py"


def load_example():
    spec = importlib.util.spec_from_file_location("digits_pet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_digits_example_prints_accuracy_and_bytes_per_method(capsys):
    adaptation, sequence = load_example().main(quick=True)
    out = capsys.readouterr().out
    assert "| adapter r=8 1-bit |" in out and "| LAE, ema_decay=0.998" in out
    rows = {name: (acc[0], nbytes) for name, acc, _, _, nbytes in adaptation}
    assert rows["full fine-tuning"][0] > 30  # well above chance (10 %) after 3 epochs
    fp32, one_bit = rows["adapter r=8 fp32"][1], rows["adapter r=8 1-bit"][1]
    # 1 bit of every 32, plus mean and std for the 2 matrices of each of the 13 layers
    assert one_bit == fp32 // 32 + 13 * 2 * 8
    assert rows["LoRA r=4"][1] < rows["full fine-tuning"][1] / 4
    assert len(sequence) == 4 and all(len(per_task) == 3 for _, per_task, _ in sequence)
