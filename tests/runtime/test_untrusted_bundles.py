"""A bundle is untrusted input: reading it runs no code, and it reads nothing outside itself.

Attacks: an op library shipped in the bundle that leaves a marker file when loaded (a tiny
shared object with a constructor, built here with gcc), and manifest or model paths that
point out of the folder (absolute, ``..``, symlinks) or at files the table does not list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepet.exporters.bundle import file_table
from edgepet.runtime import op_library_path
from edgepet.runtime import session as sessions
from edgepet.runtime.bundle import Bundle, BundleError

MARKER_SOURCE = """
#include <stdio.h>
__attribute__((constructor)) static void leave_marker(void) {
    FILE* f = fopen(MARKER, "w");
    if (f) { fputs("loaded\\n", f); fclose(f); }
}
"""


@pytest.fixture
def marker_library(tmp_path):
    """``(library, marker)``: a shared object that creates ``marker`` when it is loaded."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the marker library")
    source = tmp_path / "marker.c"
    source.write_text(MARKER_SOURCE)
    library = tmp_path / "marker" / "libedgepet_ort.so"
    library.parent.mkdir()
    marker = tmp_path / "LOADED"
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library),
                    str(source)], check=True, capture_output=True)
    assert not marker.exists()
    return library, marker


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles.example("mlp", 4).path, copy)
    return copy


def edit(path: Path, change) -> None:
    """Change the manifest of bundle ``path`` (it is not in its own file table)."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def retable(path: Path, **extra: Path) -> None:
    """Make the file table match the folder (plus ``extra`` entries: name -> file)."""
    from edgepet.runtime.bundle import sha256_file

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = file_table(path)
    for name, file in extra.items():
        manifest["files"][name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    (path / "manifest.json").write_text(json.dumps(manifest))


def ship_library(bundle: Path, library: Path) -> str:
    """Put ``library`` into the bundle's lib/ and name it in a consistent manifest."""
    (bundle / "lib").mkdir(exist_ok=True)
    shutil.copy2(library, bundle / "lib" / library.name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["operator"]["library"] = f"lib/{library.name}"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    retable(bundle)
    return f"lib/{library.name}"


@pytest.fixture
def no_installed_library(monkeypatch):
    """A device where edgepet's own op library is not installed."""

    def missing(arch=None):
        raise FileNotFoundError("edgepet's op library is not installed here")

    monkeypatch.setattr(sessions, "op_library_path", missing)
    monkeypatch.delenv(sessions.TRUST_BUNDLE_LIBRARY_ENV, raising=False)



# --- code execution: a library in the bundle is code ----------------------------------------


def test_inspect_and_dry_run_load_no_library_at_all(bundle_copy, marker_library):
    """Even with consent in the environment and no installed library, reading a bundle
    maps no op library into the process (checked in /proc/self/maps)."""
    library, marker = marker_library
    ship_library(bundle_copy, library)
    script = textwrap.dedent(f"""
        import edgepet.runtime.session as sessions
        from edgepet.cli import main
        codes = [main(["inspect", {str(bundle_copy)!r}]),
                 main(["verify", "--dry-run", {str(bundle_copy)!r}])]
        def missing(arch=None):
            raise FileNotFoundError("not installed")
        sessions.op_library_path = missing
        codes += [main(["inspect", {str(bundle_copy)!r}]),
                  main(["verify", "--dry-run", {str(bundle_copy)!r}]),
                  main(["inspect", "--json", {str(bundle_copy)!r}])]
        maps = open("/proc/self/maps").read()
        print("CODES", codes, "MAPPED", "libedgepet_ort" in maps)
    """)
    env = dict(os.environ, EDGEPET_TRUST_BUNDLE_LIBRARY="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120, cwd=bundle_copy.parent)
    assert "CODES [0, 0, 0, 0, 0] MAPPED False" in result.stdout, result.stderr[-2000:]
    assert not marker.exists()


def test_the_installed_library_is_preferred_over_a_shipped_one(cli, bundle_copy,
                                                               marker_library):
    library, marker = marker_library
    ship_library(bundle_copy, library)
    code, out, err = cli("verify", bundle_copy, "--trust-bundle-library")
    assert code == 0, err
    assert Bundle.open(bundle_copy).op_library(trust_library=True) == op_library_path()
    assert not marker.exists()


@pytest.mark.parametrize("command", ["run", "verify"])
def test_a_shipped_library_is_not_loaded_without_consent(cli, bundle_copy, marker_library,
                                                         no_installed_library, tmp_path,
                                                         command):
    library, marker = marker_library
    ship_library(bundle_copy, library)
    np.save(tmp_path / "x.npy", np.zeros((1, 96), np.float32))
    extra = ["--input", tmp_path / "x.npy"] if command == "run" else []
    code, _, err = cli(command, bundle_copy, *extra)
    assert code == 2
    assert "--trust-bundle-library" in err and "EDGEPET_TRUST_BUNDLE_LIBRARY=1" in err
    assert not marker.exists()


def test_a_shipped_library_whose_hash_differs_is_not_loaded_even_with_consent(
        cli, bundle_copy, marker_library, no_installed_library):
    library, marker = marker_library
    shipped = ship_library(bundle_copy, library)
    data = bytearray((bundle_copy / shipped).read_bytes())
    data[-1] ^= 0xFF  # same size: only the hash tells
    (bundle_copy / shipped).write_bytes(bytes(data))
    code, _, err = cli("verify", bundle_copy, "--trust-bundle-library")
    assert code == 2 and "SHA-256" in err
    bundle = Bundle.open(bundle_copy, check_files=False)  # the load-time check, on its own
    with pytest.raises(BundleError, match="refusing to load a changed library"):
        bundle.op_library(trust_library=True)
    assert not marker.exists()


@pytest.mark.parametrize("consent", ["flag", "environment"])
def test_consent_loads_the_shipped_library(cli, bundle_copy, marker_library,
                                           no_installed_library, monkeypatch, consent):
    """The control: with consent and a matching hash the library is loaded (the marker
    appears — the payload is live), and a library that is not an op library is exit 2."""
    library, marker = marker_library
    ship_library(bundle_copy, library)
    if consent == "flag":
        code, _, err = cli("verify", bundle_copy, "--trust-bundle-library")
    else:
        monkeypatch.setenv(sessions.TRUST_BUNDLE_LIBRARY_ENV, "1")
        code, _, err = cli("verify", bundle_copy)
    assert marker.exists()
    assert code == 2 and "cannot be loaded" in err


def test_a_real_shipped_library_runs_a_device_without_edgepet_with_consent(
        cli, bundle_copy, no_installed_library, monkeypatch):
    shipped = ship_library(bundle_copy, Path(os.path.realpath(_installed_library())))
    assert Bundle.open(bundle_copy).op_library(trust_library=True) == str(
        bundle_copy / shipped)
    code, out, err = cli("verify", bundle_copy, "--trust-bundle-library")
    assert code == 0 and "ok" in out, err
    monkeypatch.setenv(sessions.TRUST_BUNDLE_LIBRARY_ENV, "0")
    assert cli("verify", bundle_copy)[0] == 2


def test_no_library_for_this_cpu_is_a_clear_error(cli, bundle_copy, no_installed_library):
    code, _, err = cli("verify", bundle_copy, "--trust-bundle-library")
    assert code == 2 and "ships none" in err


def _installed_library() -> str:
    return op_library_path()


def test_operator_layout_must_be_the_librarys(bundle_copy):
    edit(bundle_copy, lambda m: m["operator"].update(layout="tile64"))
    with pytest.raises(BundleError, match="layout 'tile64'"):
        Bundle.open(bundle_copy)


# --- reading outside the bundle -------------------------------------------------------------


def _outside_copy(bundle: Path, rel: str) -> Path:
    """A byte-identical copy of a bundle file outside the folder: reading it would pass
    every size and hash check, so only the path rule can refuse it."""
    outside = bundle.parent / "outside" / Path(rel).name
    outside.parent.mkdir(exist_ok=True)
    shutil.copy2(bundle / rel, outside)
    return outside


def _set(manifest: dict, field: str, value: str) -> None:
    section, key = field.split(".")
    manifest[section][key] = value


FIELDS = ["model.file", "reference.inputs", "reference.outputs",
          "reference.quantized_outputs", "operator.library", "model.external_data"]
SOURCE = {"model.file": "model.onnx", "reference.inputs": "reference/inputs.npz",
          "reference.outputs": "reference/outputs.npz",
          "reference.quantized_outputs": "reference/quantized_outputs.npz",
          "operator.library": "reference/inputs.npz", "model.external_data": "model.onnx"}


def _escape(kind: str, bundle: Path, rel: str) -> str:
    outside = _outside_copy(bundle, rel)
    if kind == "absolute":
        return str(outside)
    if kind == "dotdot":
        return f"../outside/{outside.name}"
    if kind == "inner-dotdot":
        return f"reference/../../outside/{outside.name}"
    if kind == "symlink":
        link = bundle / "reference" / f"link-{outside.name}"
        link.symlink_to(outside)
        return f"reference/{link.name}"
    if kind == "symlinked-folder":
        (bundle / "sub").symlink_to(outside.parent, target_is_directory=True)
        return f"sub/{outside.name}"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "inner-dotdot", "symlink",
                                  "symlinked-folder"])
@pytest.mark.parametrize("field", FIELDS)
def test_manifest_paths_that_leave_the_bundle_are_refused(cli, bundle_copy, field, kind):
    path = _escape(kind, bundle_copy, SOURCE[field])
    outside = bundle_copy.parent / "outside" / Path(SOURCE[field]).name

    def change(m):
        _set(m, field, path)
        m["files"][path] = {"bytes": outside.stat().st_size,
                            "sha256": _sha(outside)}

    edit(bundle_copy, change)
    for command in ("inspect", "verify"):
        code, _, err = cli(command, bundle_copy)
        assert code == 2, err
        assert "inside its own folder" in err and repr(path) in err


def _sha(path: Path) -> str:
    from edgepet.runtime.bundle import sha256_file

    return sha256_file(path)


@pytest.mark.parametrize("path", ["", "reference//inputs.npz", "./reference/inputs.npz",
                                  "reference\\inputs.npz", "C:/reference/inputs.npz"])
def test_odd_path_spellings_are_refused(bundle_copy, path):
    edit(bundle_copy, lambda m: m["reference"].update(inputs=path))
    with pytest.raises(BundleError, match="inside its own folder"):
        Bundle.open(bundle_copy)


def test_a_file_table_entry_outside_the_bundle_is_refused(bundle_copy):
    outside = _outside_copy(bundle_copy, "reference/inputs.npz")
    edit(bundle_copy, lambda m: m["files"].update(
        {"../outside/inputs.npz": {"bytes": outside.stat().st_size, "sha256": _sha(outside)}}),
)
    with pytest.raises(BundleError, match="files names '../outside/inputs.npz'"):
        Bundle.open(bundle_copy)


def test_a_file_the_table_does_not_list_is_not_read(bundle_copy):
    shutil.copy2(bundle_copy / "reference/inputs.npz", bundle_copy / "reference/extra.npz")
    edit(bundle_copy, lambda m: m["reference"].update(inputs="reference/extra.npz"),
 )
    with pytest.raises(BundleError, match="file table does not list"):
        Bundle.open(bundle_copy)


def test_unlisted_files_are_ignored_and_shown(cli, bundle_copy):
    (bundle_copy / "notes.txt").write_text("mine")
    assert Bundle.open(bundle_copy).unlisted_files() == ["notes.txt"]
    code, out, _ = cli("inspect", bundle_copy)
    assert code == 0 and "never read: notes.txt" in out


@pytest.mark.parametrize("location", ["../outside/weights.bin", "/etc/passwd",
                                      "model.onnx.data", "sub/../../weights.bin"])
def test_model_external_data_outside_the_table_is_refused(cli, bundle_copy, location):
    """ONNX Runtime opens what a model's tensors point to; the model is checked first."""
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(bundle_copy / "model.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    set_external_data(tensor, location=location)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    onnx.save(model, str(bundle_copy / "model.onnx"))
    retable(bundle_copy)
    code, _, err = cli("inspect", bundle_copy)
    assert code == 2 and location in err
    assert "inside its own folder" in err or "does not list" in err


def test_a_manifest_that_is_a_symlink_out_of_the_folder_is_refused(bundle_copy):
    outside = _outside_copy(bundle_copy, "manifest.json")
    (bundle_copy / "manifest.json").unlink()
    (bundle_copy / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="inside its own folder"):
        Bundle.open(bundle_copy)


FAKE_OP_LIBRARY = """
int edgepet_op_abi_version(void) { return ABI; }
const char* edgepet_op_layout(void) { return LAYOUT; }
"""


@pytest.mark.parametrize("abi_offset, layout, expected", [
    (0, "tile64", "reads 'tile64'"),
    (98, "tile32", "speaks ABI"),
])
def test_a_library_of_another_abi_or_layout_is_refused_before_onnx_runtime_loads_it(
        cli, bundle_copy, tmp_path, no_installed_library, abi_offset, layout, expected):
    """The library is asked (through ctypes, once loading it is allowed) for its ABI and
    layout; a mismatch with the manifest is exit 2."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the fake op library")
    abi = json.loads((bundle_copy / "manifest.json").read_text())["operator"]["abi_version"]
    (tmp_path / "fake.c").write_text(FAKE_OP_LIBRARY)
    library = tmp_path / "fake" / "libedgepet_ort.so"
    library.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", f"-DABI={abi + abi_offset}",
                    f'-DLAYOUT="{layout}"', "-o", str(library), str(tmp_path / "fake.c")],
                   check=True, capture_output=True)
    assert sessions.library_operator(library) == (abi + abi_offset, layout)
    ship_library(bundle_copy, library)
    code, _, err = cli("verify", bundle_copy, "--trust-bundle-library")
    assert code == 2 and expected in err and "lib/libedgepet_ort.so" in err, err
