"""A device install: the package without torch, then `edgepet run`, `verify` and `bench`.

A fresh venv sees the folders holding the system's numpy, onnx and onnxruntime (and the
build tools) as plain path entries — their .pth files, such as another checkout's
editable install, are not run — and cannot import torch: an import hook installed by a
.pth file refuses it, as a device without torch would. The package is installed from
this checkout (not editable), so the test also catches files that the wheel mapping
forgets (edgepet.device_tests), and a missing matplotlib (the bench extra).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

_BLOCK_TORCH = (
    "import sys; sys.meta_path.insert(0, type('NoTorch', (), {'find_spec': staticmethod("
    "lambda name, path=None, target=None: (_ for _ in ()).throw(ModuleNotFoundError("
    "'torch is not installed on this device', name=name)) if name.split('.')[0] == 'torch' "
    "else None)})())\n")


@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    """A venv with edgepet installed (no torch importable); returns its python."""
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                              "get_paths()['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    import nanobind
    import onnx
    import onnxruntime
    import scikit_build_core

    system = dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (
        np, onnx, onnxruntime, nanobind, scikit_build_core))
    Path(purelib, "zz_device.pth").write_text("\n".join(system) + "\n" + _BLOCK_TORCH)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-build-isolation", "--no-deps", "--no-index", str(ROOT)],
        capture_output=True, text=True, timeout=1200)
    if build.returncode != 0:
        pytest.fail(f"installing edgepet into a fresh venv failed:\n{build.stderr[-3000:]}")
    return python, Path(purelib)


def test_run_verify_and_bench_work_without_torch(device_python, demo_bundle, tmp_path):
    python, purelib = device_python
    x = demo_bundle.reference_inputs()
    np.savez(tmp_path / "x.npz", **x)
    bundle = str(demo_bundle.path)
    script = textwrap.dedent(f"""
        import json, sys
        try:
            import torch
            sys.exit("torch is importable: the test venv is wrong")
        except ModuleNotFoundError:
            pass
        import edgepet
        assert edgepet.__file__.startswith({str(purelib)!r}), edgepet.__file__
        from edgepet.cli import main
        assert main(["run", {bundle!r}, "--input", {str(tmp_path / "x.npz")!r}]) == 0
        assert main(["verify", {bundle!r}]) == 0
        assert main(["bench", {bundle!r}, "--runs", "2", "--rounds", "1", "--warmup", "0",
                     "--delay", "0", "--threads", "1", "--energy", "none", "--baselines",
                     "ort-fp32,ort-nbits4", "-o", {str(tmp_path / "report")!r},
                     "--quiet"]) == 0
        assert "torch" not in sys.modules and "edgepet.exporters" not in sys.modules
        print("DEVICE_OK")
    """)
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert "DEVICE_OK" in result.stdout, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["contender"] for r in report["results"] if r["n_runs"] == 2} == {
        "edgepet", "ort-fp32", "ort-nbits4"}
    assert sysconfig.get_paths()["purelib"] != str(purelib)
