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
    model = [model_file] if model_file is not None else []
    code, stdout, stderr = cli("export", *model, "-o", out, "--target", "x86-avx2",
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
    # The batch stays dynamic: a batch the example did not have runs and matches torch.
    import numpy as np

    import edgepet

    x = torch.randn(5, 96)
    (got,) = edgepet.load(tmp_path / "out").run(x.numpy()).values()
    want = mlp(x).detach().numpy()
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.35


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


def test_binarized_model_with_two_adapter_state_dicts_switches_tasks(cli, tmp_path):

    import numpy as np

    import edgepet
    from edgepet import pet

    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "lora", target_modules=["fc1", "fc2"], r=4, bits=1)
    tasks = examples.random_lowbit_tasks(tuned, {"alpha": 1, "beta": 2}, scale=0.1)
    for name, model in tasks.items():
        torch.save(model.state_dict(), str(tmp_path / f"{name}.pt"))
    torch.save(tasks["alpha"], str(tmp_path / "model.pt"))
    out = tmp_path / "out"
    manifest = _export_ok(cli, tmp_path / "model.pt", out, "--trust", "--keep", "*",
                          "--adapter", f"alpha={tmp_path / 'alpha.pt'}",
                          "--adapter", f"beta={tmp_path / 'beta.pt'}")
    assert [a["name"] for a in manifest["adapters"]] == ["alpha", "beta"]
    x = np.random.default_rng(0).standard_normal((2, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    session = edgepet.load(out)
    for name, model in tasks.items():
        code, _, _ = cli("run", out, "--input", tmp_path / "x.npy", "--adapter", name,
                         "--output", tmp_path / f"y_{name}.npz")
        assert code == 0
        y = np.load(tmp_path / f"y_{name}.npz")["output"]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert np.linalg.norm(y - expected) / np.linalg.norm(expected) < 0.03
        np.testing.assert_allclose(session.run(x, adapter=name)["output"], y, rtol=1e-6)


def test_op_library_for_the_target_ships_in_the_bundle(cli, no_partial_output, tmp_path):
    from edgepet.runtime import op_library_path
    from edgepet.runtime.bundle import Bundle

    library = op_library_path()  # built for this machine: x86_64
    manifest = _export_ok(cli, None, tmp_path / "out", "--example", "mlp", "--op-library",
                          library)
    shipped = manifest["operator"]["library"]
    assert shipped.startswith("lib/") and shipped in manifest["files"]
    bundle = Bundle.open(tmp_path / "out")
    assert bundle.op_library() == library  # the installed one fits this CPU: it wins
    assert all(r.ok for r in bundle.verify())
    code, _, stderr = cli("export", "--example", "mlp", "--target", "rpi5", "--op-library",
                          library, "-o", tmp_path / "arm", "--quiet")
    assert code == 2 and "x86_64" in stderr and "aarch64" in stderr
    assert no_partial_output(tmp_path / "arm")


def test_bundle_for_an_aarch64_target_ships_the_aarch64_op_library(cli, tmp_path):
    from edgepet.runtime import op_library_path
    from edgepet.runtime.bundle import Bundle, library_arch

    try:
        op_library_path("aarch64")
    except FileNotFoundError:
        pytest.skip("this edgepet was built without the aarch64 op library "
                    "(needs g++-aarch64-linux-gnu at build time)")
    out = tmp_path / "rpi5"
    code, stdout, stderr = cli("export", "--example", "mlp", "--target", "rpi5", "-o", out,
                               "--quiet")
    assert code == 0, stderr
    bundle = Bundle.open(out)
    shipped = bundle.manifest["operator"]["library"]
    assert library_arch(out / shipped) == "aarch64"
    assert bundle.op_library() != str(out / shipped)  # this x86-64 host uses its own
    assert all(r.ok for r in bundle.verify())
