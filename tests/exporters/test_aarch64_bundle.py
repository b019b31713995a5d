"""An rpi5 bundle runs on aarch64: ONNX Runtime's own aarch64 build, the op library the
bundle ships, no Python — under qemu on an x86-64 host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_rpi5_bundle_gives_the_same_outputs_on_aarch64(tmp_path, aarch64_tools, ort_headers):
    from edgepet.exporters.pipeline import export

    tools = aarch64_tools
    bundle = export("example:llama", tmp_path / "rpi5", target="rpi5", bits=2)
    library = bundle.manifest["operator"]["library"]
    if library is None:
        pytest.skip("this edgepet was built without the aarch64 op library")
    app = tmp_path / "run_model"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-O1", "-o", str(app),
         str(ROOT / "examples/c_app/run_model.c"), f"-I{ort_headers}",
         f"-L{tools['ort_lib']}", "-lonnxruntime", "-lm"],
        check=True, capture_output=True,
    )
    run = subprocess.run(
        [str(tools["qemu"]), "-L", str(tools["sysroot"]), "-E",
         f"LD_LIBRARY_PATH={tools['ort_lib']}", str(app), str(bundle.path / library),
         str(bundle.model_path), "2", "16"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.array([float(v) for v in run.stdout.split()], np.float32)
    ids = (np.arange(32) % 7).reshape(2, 16).astype(np.int64)  # what run_model feeds
    want = bundle.session().run({"input_ids": ids})["output"].ravel()
    assert got.shape == want.shape
    # NEON and AVX2 build the same int8 tables; only float summation order differs.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
