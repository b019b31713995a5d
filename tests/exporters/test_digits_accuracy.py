"""On real data: an MLP trained on scikit-learn's handwritten digits keeps its accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepet.exporters.examples import TinyMLP
from edgepet.exporters.pipeline import export

#: Test-set accuracy the bundle may lose against fp32 PyTorch, in points (measured: 4-bit
#: 0.3, 2-bit 2.5, ternary 4.0 with the search quantizer; 397 test images).
ALLOWED_DROP = {4: 1.0, 2: 4.0, "ternary": 6.0}


@pytest.fixture(scope="module")
def digits_model():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = TinyMLP(in_features=64, hidden=128, classes=10)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[train])),
                                                 torch.from_numpy(y[train]))
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x[test])).argmax(-1).numpy() == y[test]).mean())
    return model, x[test], y[test], accuracy


@pytest.mark.parametrize("bits", list(ALLOWED_DROP), ids=str)
def test_digits_accuracy_survives_quantization(digits_model, tmp_path, bits):
    model, x, y, fp32_accuracy = digits_model
    assert fp32_accuracy > 0.95
    bundle = export(model, tmp_path / "b", target="x86-avx2", bits=bits, inputs=[x[:64]])
    predicted = bundle.session().run({"x": x})["output"].argmax(-1)
    accuracy = float((predicted == y).mean())
    assert 100 * (fp32_accuracy - accuracy) <= ALLOWED_DROP[bits], (fp32_accuracy, accuracy)
