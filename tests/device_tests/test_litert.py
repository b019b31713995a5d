"""The litert baseline, with a .tflite converted on the host by litert-torch: by hand
(--tflite FILE), or by `edgepet export --with-tflite` into the bundle.

litert-torch pulls jax, transformers and the LiteRT converter (gigabytes), so CI does
not install it; the test skips with that reason. Conversion happens where torch and the
model are — the same place `edgepet export` runs — never on the device.
"""

from __future__ import annotations

import pytest

from edgepet.device_tests import harness


def test_litert_runs_a_converted_model_next_to_edgepet(demo_bundle, quick, tmp_path):
    pytest.importorskip("ai_edge_litert", reason="pip install ai-edge-litert")
    litert_torch = pytest.importorskip("litert_torch", reason="pip install litert-torch "
                                       "(large: jax, transformers); not installed in CI")
    torch = pytest.importorskip("torch")
    from edgepet.exporters import examples

    model = examples.TinyLlama().eval()  # the model behind the demo bundle (seeded)
    path = tmp_path / "model.tflite"
    litert_torch.convert(model, (torch.zeros(1, 16, dtype=torch.int64),)).export(str(path))
    rep, _ = harness.bench(quick(demo_bundle, baselines=["litert"], tflite=str(path)))
    litert = next(r for r in rep["results"] if r["contender"] == "litert")
    assert litert["n_runs"] == 4
    # fp32 LiteRT of the PyTorch model: its error is float rounding, below edgepet's 4-bit
    assert litert["accuracy"][0]["vs_pytorch"]["relative_error"] < 1e-4
    assert any(c["baseline"] == "litert" for c in rep["comparisons"])


def test_export_with_tflite_feeds_the_litert_baseline_without_flags(tmp_path, quick):
    pytest.importorskip("ai_edge_litert", reason="pip install ai-edge-litert")
    pytest.importorskip("litert_torch", reason="pip install litert-torch (large: jax, the "
                        "LiteRT converter); not installed in CI")
    from edgepet.exporters.pipeline import export

    bundle = export("example:mlp", tmp_path / "b", target="x86-avx2", bits=4,
                    quantizer="rtn", with_tflite=True)
    assert bundle.manifest["baselines"]["tflite"]["converter"].startswith("litert-torch ")
    report, _ = harness.bench(quick(bundle, baselines=["litert"]))
    row = next(r for r in report["results"] if r["contender"] == "litert")
    assert row["n_runs"] == 4
    # fp32 LiteRT of the PyTorch model: float rounding only, far below edgepet's 4-bit error
    assert row["accuracy"][0]["vs_pytorch"]["relative_error"] < 1e-4
