"""Every model file kind `edgepet export` accepts, and every way it refuses bad input."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from edgepet.exporters import examples  # noqa: E402


@pytest.fixture(scope="module")
def mlp():
    return examples.TinyMLP().eval()


def _export_ok(cli, model_file, out, *extra):
    code, stdout, stderr = cli("export", model_file, "-o", out, "--target", "x86-avx2",
                               "--quiet", *extra)
    assert code == 0, stderr
    assert "LutMatMul" in stdout
    assert (out / "manifest.json").is_file()
    return json.loads((out / "manifest.json").read_text())


def test_torchscript_file_exports(cli, tmp_path, mlp):
    path = tmp_path / "mlp.ts"
    torch.jit.save(torch.jit.trace(mlp, mlp.example_inputs()), str(path))
    manifest = _export_ok(cli, path, tmp_path / "out")
    assert manifest["provenance"]["source_kind"] == "torchscript"
    assert manifest["inputs"][0]["shape"][1] == 96  # inferred from the first Linear


def test_torch_export_program_exports(cli, tmp_path, mlp):
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp, mlp.example_inputs()), str(path))
    manifest = _export_ok(cli, path, tmp_path / "out")
    assert manifest["provenance"]["source_kind"] == "exported-program"
    assert len(manifest["provenance"]["source_sha256"]) == 64


def test_pickled_module_needs_trust(cli, no_partial_output, tmp_path, mlp):
    path = tmp_path / "mlp.pt"
    torch.save(mlp, str(path))
    out = tmp_path / "out"
    code, _, stderr = cli("export", path, "-o", out, "--quiet")
    assert code == 2
    assert "--trust" in stderr and "runs code" in stderr
    assert no_partial_output(out)
    manifest = _export_ok(cli, path, out, "--trust")
    assert manifest["provenance"]["source_kind"] == "pickle"


def test_state_dict_with_arch_and_kwargs_exports(cli, tmp_path):
    model = examples.TinyMLP(hidden=64)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), str(path))
    manifest = _export_ok(cli, path, tmp_path / "out", "--arch",
                          "edgepet.exporters.examples:TinyMLP", "--arch-kwargs", '{"hidden": 64}')
    assert manifest["provenance"]["source_kind"] == "state-dict"
    assert {layer["N"] for layer in manifest["layers"]} == {64, 10}


def test_safetensors_state_dict_exports(cli, tmp_path, mlp):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(mlp.state_dict(), str(path))
    _export_ok(cli, path, tmp_path / "out", "--arch", "edgepet.exporters.examples:TinyMLP")


def test_state_dict_without_arch_is_refused(cli, no_partial_output, tmp_path, mlp):
    path = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), str(path))
    code, _, stderr = cli("export", path, "-o", tmp_path / "out", "--quiet")
    assert code == 2 and "--arch" in stderr
    assert no_partial_output(tmp_path / "out")


@pytest.mark.parametrize("arch, expected", [
    ("nosuchpackage.mod:Net", "cannot be imported"),
    ("edgepet.exporters.examples:Nope", "has no attribute"),
    ("edgepet.exporters.examples", "package.module:Class"),
    ("edgepet.exporters.examples:TinyViT", "loading"),  # weights of another model
])
def test_bad_arch_is_refused(cli, no_partial_output, tmp_path, mlp, arch, expected):
    path = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), str(path))
    code, _, stderr = cli("export", path, "--arch", arch, "-o", tmp_path / "out", "--quiet")
    assert code == 2 and expected in stderr
    assert no_partial_output(tmp_path / "out")


def test_truncated_and_foreign_files_are_refused(cli, no_partial_output, tmp_path, mlp):
    good = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp, mlp.example_inputs()), str(good))
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "notes.pt"
    foreign.write_text("this is not a model\n")
    missing = tmp_path / "missing.pt"
    for path in (truncated, foreign, missing):
        out = tmp_path / f"out-{path.stem}"
        code, _, stderr = cli("export", path, "-o", out, "--quiet")
        assert code == 2, stderr
        assert str(path.name) in stderr
        assert no_partial_output(out)


def test_unknown_target_is_refused(cli, no_partial_output, tmp_path):
    code, _, stderr = cli("export", "--example", "mlp", "--target", "pdp11", "-o",
                          tmp_path / "out", "--quiet")
    assert code == 2
    assert "pdp11" in stderr and "rpi5" in stderr
    assert no_partial_output(tmp_path / "out")


def test_input_shape_the_model_cannot_take_is_refused(cli, no_partial_output, tmp_path):
    vit = examples.TinyViT().eval()
    path = tmp_path / "vit.ts"
    torch.jit.save(torch.jit.trace(vit, vit.example_inputs()), str(path))
    out = tmp_path / "out"
    code, _, stderr = cli("export", path, "--input-shape", "1,3,30,30", "-o", out, "--quiet")
    assert code == 2 and "(1, 3, 30, 30)" in stderr and "--input-shape" in stderr
    assert no_partial_output(out)
    # Nothing to infer the image size from: the error asks for --input-shape.
    code, _, stderr = cli("export", path, "-o", out, "--quiet")
    assert code == 2 and "--input-shape" in stderr
    _export_ok(cli, path, out, "--input-shape", "2,3,32,32")


@pytest.mark.parametrize("shape", ["1,x,3", "float8:1,3", "0,3", ""])
def test_malformed_input_shape_is_refused(cli, tmp_path, shape):
    code, _, stderr = cli("export", "--example", "mlp", "--input-shape", shape, "-o",
                          tmp_path / "out", "--quiet")
    assert code == 2 and "--input-shape" in stderr


@pytest.mark.parametrize("option, value", [("--bits", "5"), ("--group-size", "48"),
                                           ("--group-size", "big")])
def test_bad_quantization_options_are_refused(cli, tmp_path, option, value):
    code, _, stderr = cli("export", "--example", "mlp", option, value, "-o", tmp_path / "o",
                          "--quiet")
    assert code == 2 and value in stderr


def test_existing_bundle_needs_force(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("export", "--example", "mlp", "-o", out, "--quiet")[0] == 0
    code, _, stderr = cli("export", "--example", "mlp", "-o", out, "--quiet")
    assert code == 2 and "--force" in stderr
    assert (out / "manifest.json").is_file()  # the old bundle is untouched
    assert cli("export", "--example", "mlp", "-o", out, "--quiet", "--force")[0] == 0


def test_missing_adapter_path_is_refused(cli, no_partial_output, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(examples.TinyMLP().state_dict(), str(path))
    code, _, stderr = cli("export", path, "--arch", "edgepet.exporters.examples:TinyMLP",
                          "--adapter", f"t={tmp_path / 'nope'}", "-o", tmp_path / "out",
                          "--quiet")
    assert code == 2 and "nope" in stderr
    assert no_partial_output(tmp_path / "out")
