"""``edgepet export --with-tflite``: the float model converted by litert-torch travels in the
bundle (listed and hashed), and bench's litert baseline uses it without --tflite.

The wiring is tested with a fake converter; the real conversion only where litert-torch
is installed (it pulls jax and the LiteRT converter; CI does not install it)."""

from __future__ import annotations

import sys

import pytest

from edgepet.exporters import litert
from edgepet.runtime import BadInputError, Bundle

FAST = ("--example", "mlp", "--target", "x86-avx2", "--bits", "4", "--quantizer", "rtn",
        "--quiet")


@pytest.fixture
def fake_converter(monkeypatch):
    """litert-torch replaced by a converter that writes a marker file and records calls."""
    calls = []

    def convert(module, example, path):
        calls.append((type(module).__name__, [tuple(t.shape) for t in example]))
        path.write_bytes(b"TFL3 fake flatbuffer")
        return {"file": litert.FILE, "batch": 1, "inputs": []}

    monkeypatch.setattr(litert, "converter_version", lambda: "9.9-fake")
    monkeypatch.setattr(litert, "convert", convert)
    return calls


def test_with_tflite_puts_the_converted_model_in_the_bundle_and_manifest(cli, tmp_path,
                                                                         fake_converter):
    code, out, err = cli("export", *FAST, "--with-tflite", "-o", tmp_path / "b")
    assert code == 0, err
    assert [module for module, _ in fake_converter] == ["TinyMLP"]  # the float model, once
    bundle = Bundle.open(tmp_path / "b")  # the file is listed, and its hash checks out
    entry = bundle.manifest["baselines"]["tflite"]
    assert entry["file"] == "baselines/model.tflite"
    assert entry["converter"] == "litert-torch 9.9-fake"
    assert bundle.manifest["files"]["baselines/model.tflite"]["bytes"] == 20
    assert "tflite      baselines/model.tflite (litert-torch 9.9-fake)" in out


def test_without_the_flag_there_is_no_tflite(bundles):
    bundle = bundles.example("mlp", 4)
    assert bundle.manifest["baselines"]["tflite"] is None
    assert not (bundle.path / "baselines").exists()


def test_bench_litert_uses_the_bundled_tflite(cli, tmp_path, fake_converter, monkeypatch):
    from edgepet.device_tests import baselines

    assert cli("export", *FAST, "--with-tflite", "-o", tmp_path / "b")[0] == 0
    monkeypatch.setattr(baselines, "litert_available", lambda: None)
    (contender,) = baselines.build(["litert"], Bundle.open(tmp_path / "b"), tmp_path)
    assert contender.status == "ok"
    assert contender.model == str(tmp_path / "b" / "baselines" / "model.tflite")
    assert "converted at export by litert-torch 9.9-fake" in contender.description


def test_bench_litert_without_a_tflite_says_to_export_with_the_flag(bundles, tmp_path,
                                                                    monkeypatch):
    from edgepet.device_tests import baselines

    monkeypatch.setattr(baselines, "litert_available", lambda: None)
    (contender,) = baselines.build(["litert"], bundles.example("mlp", 4), tmp_path)
    assert contender.status == "unavailable" and "--with-tflite" in contender.reason


def test_without_litert_torch_the_flag_is_exit_2_and_nothing_is_written(
        cli, tmp_path, monkeypatch, no_partial_output):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if absent
    code, _, err = cli("export", *FAST, "--with-tflite", "-o", tmp_path / "b")
    assert code == 2
    assert "litert-torch, which is not installed here" in err and "pip install litert-torch" in err
    assert no_partial_output(tmp_path / "b")


def test_a_model_litert_torch_cannot_convert_is_exit_2_and_nothing_is_written(
        cli, tmp_path, monkeypatch, no_partial_output):
    class Refusing:
        @staticmethod
        def convert(module, args):
            raise RuntimeError("unsupported op aten::frobnicate")

    monkeypatch.setattr(litert, "converter_version", lambda: "9.9-fake")
    monkeypatch.setitem(sys.modules, "litert_torch", Refusing)
    code, _, err = cli("export", *FAST, "--with-tflite", "-o", tmp_path / "b")
    assert code == 2
    assert "litert-torch could not convert this model" in err and "aten::frobnicate" in err
    assert no_partial_output(tmp_path / "b")


def test_converter_version_names_the_install_when_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(BadInputError, match="pip install litert-torch"):
        litert.converter_version()
