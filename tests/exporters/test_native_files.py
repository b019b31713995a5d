"""A bundle for another platform carries the op library and edgepet-run built for it, or
its manifest says which is missing and how to build it; the export warns, and fails only
when asked to (--require-native)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgepet.exporters import bundle as bundle_writer
from edgepet.exporters.pipeline import export
from edgepet.runtime import BadInputError, Bundle
from edgepet.runtime.manifest import missing_native
from edgepet.runtime.session import library_arch
from edgepet.targets import get_target

#: A fast export: the small MLP, round to nearest.
FAST = {"bits": 4, "quantizer": "rtn"}


def _export(tmp_path, target, name="bundle", **options):
    lines: list[str] = []
    bundle = export("example:mlp", tmp_path / name, target=target, progress=lines.append,
                    **FAST, **options)
    return bundle, "\n".join(lines)


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """An empty install folder used instead of the real one: no native builds for any
    other platform until a test puts files there."""
    root = tmp_path / "install"
    root.mkdir()
    monkeypatch.setattr(bundle_writer, "install_folders", lambda: [root])
    return root


def test_an_rpi5_bundle_ships_the_aarch64_op_library_and_edgepet_run(tmp_path):
    files = bundle_writer.native_files(get_target("rpi5"))
    if files.missing:
        pytest.skip("this edgepet was built without the aarch64 cross build: "
                    + "; ".join(m["why"] for m in files.missing))
    bundle, said = _export(tmp_path, "rpi5")
    op = bundle.manifest["operator"]
    assert op["library"] == "lib/libedgepet_ort.so" and op["runner"] == "bin/edgepet-run"
    assert op["missing"] == []
    for rel in (op["library"], op["runner"]):
        assert rel in bundle.manifest["files"]  # hashed like every file
        assert library_arch(bundle.path / rel) == "aarch64"
    assert (bundle.path / op["runner"]).stat().st_mode & 0o111  # still executable
    assert "warning" not in said
    Bundle.open(bundle.path)  # the reader accepts the runner path (listed, inside)


def test_a_host_bundle_ships_no_native_files(tmp_path):
    bundle, _ = _export(tmp_path, "x86-avx2")
    op = bundle.manifest["operator"]
    assert (op["library"], op["runner"], op["missing"]) == (None, None, [])


def test_without_the_cross_build_the_manifest_says_what_is_missing_and_export_warns(
        tmp_path, fake_install):
    bundle, said = _export(tmp_path, "rpi5")
    op = bundle.manifest["operator"]
    assert op["library"] is None and op["runner"] is None
    assert [m["what"] for m in op["missing"]] == ["op library", "edgepet-run"]
    assert all("g++-aarch64-linux-gnu" in m["how"] for m in op["missing"])
    assert "warning: this edgepet has no op library and edgepet-run for linux-aarch64" in said
    assert "g++-aarch64-linux-gnu" in missing_native(bundle.manifest)


def test_require_native_fails_instead_and_writes_nothing(tmp_path, fake_install,
                                                         no_partial_output):
    with pytest.raises(BadInputError, match="no op library and edgepet-run for linux-aarch64.*"
                                            "nothing was written"):
        _export(tmp_path, "rpi5", require_native=True)
    assert no_partial_output(tmp_path / "bundle")


def test_an_apple_bundle_ships_the_macos_builds_of_this_install(tmp_path, fake_install):
    (fake_install / "lib" / "macos-arm64").mkdir(parents=True)
    (fake_install / "bin" / "macos-arm64").mkdir(parents=True)
    (fake_install / "lib" / "macos-arm64" / "libedgepet_ort.dylib").write_bytes(b"dylib")
    (fake_install / "bin" / "macos-arm64" / "edgepet-run").write_bytes(b"runner")
    bundle, said = _export(tmp_path, "apple-m1")
    op = bundle.manifest["operator"]
    assert (op["library"], op["runner"], op["missing"]) == (
        "lib/libedgepet_ort.dylib", "bin/edgepet-run", [])
    assert (bundle.path / op["library"]).read_bytes() == b"dylib"
    assert "warning" not in said


def test_an_apple_bundle_without_zig_says_how_to_build_its_files(tmp_path, fake_install):
    bundle, said = _export(tmp_path, "apple-m2")
    missing = bundle.manifest["operator"]["missing"]
    assert [m["what"] for m in missing] == ["op library", "edgepet-run"]
    assert "EDGEPET_CROSS_APPLE=ON" in missing[0]["how"] and "ziglang" in missing[0]["how"]
    assert "warning" in said


def test_an_android_bundle_says_the_ndk_build_is_missing(tmp_path):
    bundle, said = _export(tmp_path, "android-arm64")
    missing = bundle.manifest["operator"]["missing"]
    assert [m["what"] for m in missing] == ["op library", "edgepet-run"]
    how = missing[0]["how"]
    for needle in ("Android NDK", "android.toolchain.cmake", "arm64-v8a", "API level 24",
                   "docs/export.md", "registerCustomOpLibrary"):
        assert needle in how
    assert "warning" in said
    assert (tmp_path / "bundle" / "lib").exists() is False


def test_a_device_without_an_installed_library_stops_early_with_the_manifest_text(
        tmp_path, monkeypatch):
    bundle, _ = _export(tmp_path, "android-arm64")
    monkeypatch.setattr("edgepet.runtime.session.installed_op_library", lambda: None)
    with pytest.raises(BadInputError, match="carries no op library for android-arm64.*NDK"):
        bundle.op_library()


def test_the_native_runner_stops_on_a_bundle_without_its_op_library(tmp_path):
    from edgepet.device_tests import native

    try:
        runner = native.runner_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    bundle, _ = _export(tmp_path, "android-arm64")
    done = subprocess.run([str(runner), str(bundle.path)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "carries no op library" in done.stderr and "android.toolchain.cmake" in done.stderr


def test_the_cli_summary_names_shipped_and_missing_native_files(cli, tmp_path, fake_install):
    code, out, err = cli("export", "--example", "mlp", "--target", "android-arm64", "--bits",
                         "4", "--quantizer", "rtn", "-o", tmp_path / "b")
    assert code == 0, err
    assert "missing     op library:" in out and "warning:" in err
    code, _, err = cli("export", "--example", "mlp", "--target", "android-arm64",
                       "--require-native", "-o", tmp_path / "c", "--quiet")
    assert code == 2 and "NDK" in err and not (tmp_path / "c").exists()


def test_a_given_op_library_is_shipped_for_the_host_platform_too(tmp_path):
    from edgepet.runtime import op_library_path

    library = tmp_path / "libedgepet_ort.so"
    shutil.copy(op_library_path(), library)
    bundle, _ = _export(tmp_path, "x86-avx2", op_library=library)
    assert bundle.manifest["operator"]["library"] == "lib/libedgepet_ort.so"
    assert Path(bundle.path / "lib" / "libedgepet_ort.so").read_bytes() == library.read_bytes()
