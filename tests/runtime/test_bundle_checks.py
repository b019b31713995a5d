"""A bundle is checked when read: files, sizes, hashes, schema version, op ABI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgepet.exporters.pipeline import export
from edgepet.runtime import manifest as manifest_schema
from edgepet.runtime.bundle import Bundle, BundleError


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    source = bundles.example("mlp", 4)
    copy = tmp_path / "bundle"
    shutil.copytree(source.path, copy)
    return copy


def _edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_follows_its_json_schema(bundles):
    manifest = bundles.example("llama", 4).manifest
    assert manifest_schema.check(manifest) == []
    jsonschema = pytest.importorskip("jsonschema")  # cross-check the small checker
    jsonschema.validate(manifest, manifest_schema.schema())
    assert manifest["schema_version"] == manifest_schema.SCHEMA_VERSION


def test_schema_file_ships_in_the_bundle(bundles):
    bundle = bundles.example("mlp", 4)
    shipped = json.loads((bundle.path / "manifest.schema.json").read_text())
    assert shipped == manifest_schema.schema()


def test_checker_names_what_is_wrong():
    problems = manifest_schema.check({"schema": "edgepet.bundle", "schema_version": "one"})
    assert any("schema_version: expected integer" in p for p in problems)
    assert any("missing required field 'layers'" in p for p in problems)


@pytest.mark.parametrize("damage, expected", [
    (lambda p: (p / "model.onnx").write_bytes((p / "model.onnx").read_bytes()[:100]),
     "truncated"),
    (lambda p: (p / "reference" / "inputs.npz").unlink(), "missing reference/inputs.npz"),
    (lambda p: (p / "model.onnx").write_bytes(
        bytes(b ^ 1 if i == 50 else b for i, b in enumerate((p / "model.onnx").read_bytes()))),
     "SHA-256"),
    (lambda p: _edit_manifest(p, lambda m: m.update(schema_version=99)), "schema version 99"),
    (lambda p: _edit_manifest(p, lambda m: m["operator"].update(abi_version=99)), "ABI 99"),
    # A bundle of ABI 2 (4-bit codes as bit-planes, layout "tile32"): re-export.
    (lambda p: _edit_manifest(p, lambda m: m["operator"].update(abi_version=2, layout="tile32")),
     "made for op ABI 2"),
    (lambda p: _edit_manifest(p, lambda m: m.pop("layers")), "missing required field"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
])
def test_damaged_bundle_is_a_clear_error(bundle_copy, damage, expected):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=expected.replace("(", r"\(")):
        Bundle.open(bundle_copy)


def _as_abi3(manifest):
    manifest["operator"].update(abi_version=3, layout="tile32-nibble4")


def test_abi3_bundle_without_3bit_weights_still_loads_and_runs(bundle_copy):
    """ABI 4 changed the 3-bit layout alone: a 4-bit bundle of ABI 3 loads and runs."""
    _edit_manifest(bundle_copy, _as_abi3)
    bundle = Bundle.open(bundle_copy)
    assert all(r.ok for r in bundle.verify())


def test_abi3_bundle_with_3bit_weights_is_refused_naming_layers(bundles, tmp_path):
    copy = tmp_path / "bundle3"
    shutil.copytree(bundles.example("mlp", 3).path, copy)
    _edit_manifest(copy, _as_abi3)
    with pytest.raises(BundleError, match=r"made for LutMatMul ABI 3, whose 3-bit weights "
                                          r"\(fc1, .*another layout — export the model again"):
        Bundle.open(copy)


def test_large_models_keep_weights_as_external_data(tmp_path):
    bundle = export("example:mlp", tmp_path / "b", target="x86-avx2",
                    external_data_threshold=0)
    assert bundle.manifest["model"]["external_data"] == "model.onnx.data"
    assert (bundle.path / "model.onnx.data").stat().st_size > 10_000
    assert "model.onnx.data" in bundle.manifest["files"]
    assert all(r.ok for r in bundle.verify())


def test_failed_export_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        export("example:mlp", out, target="x86-avx2", input_shapes=["1,95"])
    assert list(tmp_path.iterdir()) == []


def test_loading_and_running_a_bundle_never_imports_torch(bundles):
    """A device has numpy, onnx, onnxruntime and the op library — not torch."""
    bundle = bundles.example("mlp", 4)
    x = np.zeros((1, 96), np.float32)
    np.save(bundle.path.parent / "x_no_torch.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import edgepet
        session = edgepet.load({str(bundle.path)!r})
        session.run({{"x": __import__("numpy").zeros((1, 96), "float32")}})
        from edgepet.cli import main
        for args in (["inspect", {str(bundle.path)!r}], ["verify", {str(bundle.path)!r}],
                     ["targets"],
                     ["run", {str(bundle.path)!r}, "--input",
                      {str(bundle.path.parent / "x_no_torch.npy")!r}]):
            assert main(args) == 0, args
        assert "torch" not in sys.modules, "torch was imported"
        print("NO_TORCH_OK")
    """)
    # Run outside the source tree, so that the installed package is the one imported.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=bundle.path.parent)
    assert "NO_TORCH_OK" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("version", [2, 7])
def test_a_model_importing_another_op_set_version_is_refused(bundle_copy, version):
    """ONNX Runtime would run it with the version-1 op unrefused (docs/operator.md)."""
    import onnx

    from edgepet.runtime.bundle import sha256_file

    model_file = bundle_copy / "model.onnx"
    model = onnx.load(str(model_file), load_external_data=False)
    for opset in model.opset_import:
        if opset.domain == "ai.edgepet":
            opset.version = version
    onnx.save(model, str(model_file))
    _edit_manifest(bundle_copy, lambda m: m["files"]["model.onnx"].update(
        bytes=model_file.stat().st_size, sha256=sha256_file(model_file)))
    with pytest.raises(BundleError, match=f"imports ai.edgepet at op-set version {version}"):
        Bundle.open(bundle_copy)
