"""Exit codes: 2 for every bad input (with the file and what to do), 3 for `verify` beyond
tolerance, 1 only for edgepet's own bugs; `--force` replaces a bundle and nothing else.

The damaged bundles here have their file table rewritten to match, as a careless tool or
an attacker would leave them, so that the checks behind the hashes are what is attacked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepet.exporters.bundle import file_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(bundles, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundles.example("mlp", 4).path, copy)
    return copy


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def retable(path: Path) -> None:
    manifest = manifest_of(path)
    manifest["files"] = file_table(path)
    write_manifest(path, manifest)


def _x(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", np.zeros((2, 96), np.float32))
    return tmp_path / "x.npy"


# --- bad bundles: exit 2, the file named ------------------------------------------------------


def _garbage_model(b: Path) -> str:
    (b / "model.onnx").write_bytes(b"\x08garbage" * 100)
    return "model.onnx"


def _model_ort_refuses(b: Path) -> str:
    model = onnx.load(str(b / "model.onnx"))
    node = model.graph.node[0]
    model.graph.node.insert(0, onnx.helper.make_node("NoSuchOp", [node.input[0]], ["unused"]))
    onnx.save(model, str(b / "model.onnx"))
    return "model.onnx"


def _damaged_adapter(b: Path) -> str:
    (b / "adapters").mkdir()
    (b / "adapters" / "task.onnx_adapter").write_bytes(b"not an adapter" * 50)
    manifest = manifest_of(b)
    manifest["adapters"] = [{"name": "task", "file": "adapters/task.onnx_adapter",
                             "parameters": [], "bytes": 700}]
    write_manifest(b, manifest)
    return "adapters/task.onnx_adapter"


def _corrupt_reference(b: Path) -> str:
    (b / "reference" / "outputs.npz").write_bytes(b"PK\x03\x04 damaged")
    return "reference/outputs.npz"


def _reference_without_the_output(b: Path) -> str:
    np.savez(b / "reference" / "outputs.npz", something_else=np.zeros(3))
    return "reference/outputs.npz"


def _reference_of_another_shape(b: Path) -> str:
    np.savez(b / "reference" / "quantized_outputs.npz", output=np.zeros((7, 3), np.float32))
    return "reference/quantized_outputs.npz"


def _reference_inputs_that_are_pickles(b: Path) -> str:
    with open(b / "reference" / "inputs.npz", "wb") as f:
        np.savez(f, x=np.array([{"a": 1}], dtype=object))
    return "reference/inputs.npz"


BAD_BUNDLES = {
    "model is not ONNX": (_garbage_model, ("inspect", "run", "verify")),
    "model ONNX Runtime refuses": (_model_ort_refuses, ("run", "verify")),
    "damaged adapter": (_damaged_adapter, ("verify",)),
    "corrupt reference file": (_corrupt_reference, ("verify",)),
    "reference lacks an output": (_reference_without_the_output, ("verify",)),
    "reference of another shape": (_reference_of_another_shape, ("verify",)),
    "pickled reference inputs": (_reference_inputs_that_are_pickles, ("verify",)),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_a_damaged_bundle_is_exit_code_2_naming_the_file(cli, bundle, tmp_path, case):
    damage, commands = BAD_BUNDLES[case]
    named = damage(bundle)
    retable(bundle)
    for command in commands:
        extra = ["--input", _x(tmp_path)] if command == "run" else []
        code, _, err = cli(command, bundle, *extra)
        assert code == 2, (command, err)
        assert named in err and " — " in err, (command, err)
        assert "internal error" not in err and "Traceback" not in err


def test_a_missing_reference_file_is_exit_code_2(cli, bundle):
    (bundle / "reference" / "outputs.npz").unlink()
    code, _, err = cli("verify", bundle)
    assert code == 2 and "reference/outputs.npz" in err


def test_an_adapter_the_run_names_that_is_damaged_is_exit_code_2(cli, bundle, tmp_path):
    _damaged_adapter(bundle)
    retable(bundle)
    code, _, err = cli("run", bundle, "--input", _x(tmp_path), "--adapter", "task")
    assert code == 2 and "adapters/task.onnx_adapter" in err


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
def test_a_manifest_nested_absurdly_deep_is_exit_code_2(cli, bundle, depth):
    manifest = manifest_of(bundle)
    manifest["provenance"]["pet"] = "DEEP"
    nested = '{"a":' * depth + "{}" + "}" * depth
    (bundle / "manifest.json").write_text(json.dumps(manifest).replace('"DEEP"', nested))
    for command in ("inspect", "verify"):
        code, _, err = cli(command, bundle)
        assert code == 2 and "nested" in err and "manifest.json" in err, err


def test_a_huge_manifest_is_exit_code_2(cli, bundle):
    manifest = manifest_of(bundle)
    manifest["provenance"]["padding"] = "x" * (17 << 20)
    write_manifest(bundle, manifest)
    code, _, err = cli("inspect", bundle)
    assert code == 2 and "manifest" in err


@pytest.mark.parametrize("field", ["layers.0.stored_bytes", "layers.0.group_size",
                                   "layers.0.N", "layers.0.K", "quantization.group_size",
                                   "target.threads"])
def test_a_zero_where_edgepet_divides_is_exit_code_2(cli, bundle, field):
    manifest = manifest_of(bundle)
    *path, last = field.split(".")
    node = manifest
    for key in path:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = 0
    write_manifest(bundle, manifest)
    for command in ("inspect", "verify"):
        code, _, err = cli(command, bundle)
        assert code == 2 and "below the minimum 1" in err, (command, err)


# --- outputs that cannot be written -----------------------------------------------------------


def test_an_output_folder_that_cannot_be_created_is_exit_code_2(cli, tmp_path):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file" / "bundle", Path("/proc/edgepet-cannot-write/bundle")):
        code, _, err = cli("export", "--example", "mlp", "-o", out, "--quiet")
        assert code == 2 and str(out) in err and "choose a folder" in err, err


def test_a_run_output_that_cannot_be_written_is_exit_code_2(cli, bundle, tmp_path):
    (tmp_path / "a-folder.npz").mkdir()
    for out in (tmp_path / "a-folder.npz", Path("/proc/edgepet-cannot-write/y.npz")):
        code, _, err = cli("run", bundle, "--input", _x(tmp_path), "--output", out)
        assert code == 2 and str(out) in err, err


def test_an_os_error_naming_a_file_is_exit_code_2(cli, monkeypatch):
    import edgepet.cli

    def fails(args):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(edgepet.cli, "_cmd_targets", fails)
    code, _, err = cli("targets")
    assert code == 2 and "/some/file: Permission denied" in err


# --- internal errors and verify -----------------------------------------------------------------


def test_only_a_bug_is_exit_code_1(cli, monkeypatch):
    import edgepet.cli

    def bug(args):
        return 1 // 0

    monkeypatch.setattr(edgepet.cli, "_cmd_targets", bug)
    code, _, err = cli("targets")
    assert code == 1 and "internal error: ZeroDivisionError" in err and "bug" in err


def test_an_interrupt_is_not_an_internal_error(cli, monkeypatch):
    import edgepet.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgepet.cli, "_cmd_targets", interrupted)
    assert cli("targets")[0] == 130


def test_a_library_override_that_is_missing_is_exit_code_2(cli, bundle, monkeypatch):
    monkeypatch.setenv("EDGEPET_ORT_LIBRARY", str(bundle / "no-such-library.so"))
    code, _, err = cli("verify", bundle)
    assert code == 2 and "EDGEPET_ORT_LIBRARY" in err and "no-such-library.so" in err


def test_exit_codes_are_documented_in_help_and_docs(capsys):
    from edgepet.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("exit codes:", "  3  verify", "  2  bad input", "  1  internal error",
                   "EDGEPET_TRUST_BUNDLE_LIBRARY=1", "--trust-bundle-library"):
        assert needle in text
    docs = (ROOT / "docs" / "cli.md").read_text()
    for needle in ("**3**", "EDGEPET_TRUST_BUNDLE_LIBRARY", "--trust-bundle-library",
                   "--dry-run"):
        assert needle in docs


# --- --force replaces a bundle, and only a bundle ---------------------------------------------


def _export(cli, out: Path, *extra) -> tuple[int, str]:
    code, _, err = cli("export", "--example", "mlp", "--target", "x86-avx2", "-o", out,
                       "--quiet", "--quantizer", "rtn", *extra)
    return code, err


@pytest.fixture
def exported(bundles, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(bundles.example("mlp", 4).path, out)
    return out


def test_force_replaces_a_bundle(cli, exported):
    before = manifest_of(exported)["created"], manifest_of(exported)["quantization"]
    code, err = _export(cli, exported, "--force", "--bits", "2")
    assert code == 0, err
    assert manifest_of(exported)["quantization"]["bits"] == 2 != before[1]["bits"]


def test_force_refuses_a_folder_that_is_not_a_bundle(cli, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    code, err = _export(cli, out, "--force")
    assert code == 2 and "not a bundle" in err
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8 a photo"


@pytest.mark.parametrize("added", ["notes.txt", "reference/my_inputs.npz", "lib/other.so"])
def test_force_refuses_and_keeps_files_a_user_added_to_a_bundle(cli, exported, added):
    (exported / added).parent.mkdir(exist_ok=True)
    (exported / added).write_text("mine")
    manifest = (exported / "manifest.json").read_text()
    code, err = _export(cli, exported, "--force")
    assert code == 2 and added in err and "move them out" in err
    assert (exported / added).read_text() == "mine"
    assert (exported / "manifest.json").read_text() == manifest  # the bundle is untouched


def test_force_refuses_a_bundle_whose_manifest_cannot_be_read(cli, exported):
    (exported / "manifest.json").write_text("{damaged")
    code, err = _export(cli, exported, "--force")
    assert code == 2 and "cannot read" in err
    assert (exported / "model.onnx").is_file()


def test_demo_output_refuses_a_folder_that_is_not_a_bundle(cli, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = cli("demo", "--example", "mlp", "-o", out)
    assert code == 2 and "not a bundle" in err
    assert (out / "thesis.tex").read_text() == "years of work"


def test_an_output_that_is_a_file_is_refused(cli, tmp_path):
    (tmp_path / "out").write_text("a file")
    code, err = _export(cli, tmp_path / "out", "--force")
    assert code == 2 and "not a folder" in err
    assert (tmp_path / "out").read_text() == "a file"


def test_force_keeps_the_bench_reports_of_the_bundle_it_replaces(cli, exported):
    report = exported / "reports" / "20261128-120000" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"mine": true}')
    code, err = _export(cli, exported, "--force", "--bits", "2")
    assert code == 0, err
    assert manifest_of(exported)["quantization"]["bits"] == 2  # replaced...
    assert report.read_text() == '{"mine": true}'  # ...and the report moved along
    assert "reports/20261128-120000/report.json" not in manifest_of(exported)["files"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".out.")]


def test_force_still_refuses_other_files_next_to_reports(cli, exported):
    (exported / "reports").mkdir()
    (exported / "reports" / "report.md").write_text("kept")
    (exported / "notes.txt").write_text("mine")
    code, err = _export(cli, exported, "--force")
    assert code == 2 and "notes.txt" in err and "reports" not in err.split("(")[1]
    assert (exported / "reports" / "report.md").read_text() == "kept"
    assert (exported / "notes.txt").read_text() == "mine"


def test_reports_that_cannot_move_stay_in_the_old_folder_and_are_named(exported, monkeypatch):
    from edgepet.exporters import bundle as bundle_writer

    (exported / "reports").mkdir()
    (exported / "reports" / "report.md").write_text("kept")
    real_rename = Path.rename

    def rename(self, target):
        if self.name == "reports":
            raise PermissionError(13, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    from edgepet.runtime.errors import BadInputError

    with pytest.raises(BadInputError, match=r"reports/ could not be moved .* it is still in"):
        with bundle_writer.staged_output(exported, overwrite=True) as stage:
            (stage / "manifest.json").write_text("{}")
    kept = [p for p in exported.parent.iterdir() if p.name.startswith(".out.old-")]
    assert len(kept) == 1 and (kept[0] / "reports" / "report.md").read_text() == "kept"


# --- ValueError becomes bad input once, at the export boundary ---------------------------------


def test_an_unknown_target_is_exit_code_2_and_bad_input_for_python_callers(cli, tmp_path):
    from edgepet.exporters.pipeline import export
    from edgepet.runtime.errors import BadInputError

    code, _, err = cli("export", "--example", "mlp", "--target", "pdp11", "-o", tmp_path / "b")
    assert code == 2 and "unknown target 'pdp11' — known targets: rpi5" in err
    with pytest.raises(BadInputError, match="unknown target 'pdp11'"):
        export("example:mlp", tmp_path / "b", target="pdp11")


def test_a_weight_that_cannot_be_quantized_is_exit_code_2_with_its_message(cli, tmp_path):
    import torch

    from edgepet.exporters import examples

    model = examples.TinyMLP().eval()
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).weight[0, 0] = \
            float("nan")
    path = tmp_path / "nan.pt"
    torch.save(model, path)
    code, _, err = cli("export", path, "--trust", "-o", tmp_path / "b", "--quiet",
                       "--quantizer", "rtn")
    assert code == 2, err
    assert "non-finite" in err and "internal error" not in err
    assert not (tmp_path / "b").exists()
