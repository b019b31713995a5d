"""An app with no Python in it loads the op library through ONNX Runtime's C API
and gets the same numbers as edgepet's Python session."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from edgepet import runtime
from edgepet.exporters.onnx import linear_model
from edgepet.quant import quantize

ROOT = Path(__file__).resolve().parents[2]


def _ort_library() -> Path | None:
    capi = Path(onnxruntime.__file__).parent / "capi"
    found = sorted(capi.glob("libonnxruntime.so*"))
    return found[0] if found else None


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_app_runs_a_lutmatmul_model(tmp_path, ort_headers):
    headers, library = ort_headers, _ort_library()
    if library is None:
        pytest.skip("ONNX Runtime's shared library not found in the onnxruntime package")
    # The wheel ships libonnxruntime.so.1.x.y with soname libonnxruntime.so.1.
    (tmp_path / "libonnxruntime.so").symlink_to(library)
    (tmp_path / "libonnxruntime.so.1").symlink_to(library)
    app = tmp_path / "run_model"
    subprocess.run(
        ["cc", "-O1", "-o", str(app), str(ROOT / "examples/c_app/run_model.c"),
         f"-I{headers}", f"-L{tmp_path}", "-lonnxruntime", "-lm",
         f"-Wl,-rpath,{tmp_path}"],
        check=True, capture_output=True,
    )
    rng = np.random.default_rng(0)
    qt = quantize(rng.standard_normal((40, 100), dtype=np.float32), 3, 32, symmetric=False)
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_model(qt).SerializeToString())
    run = subprocess.run([str(app), runtime.op_library_path(), str(model), "2", "100"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = np.array([float(v) for v in run.stdout.split()], np.float32).reshape(2, 40)
    x = np.sin(np.arange(200, dtype=np.float64)).astype(np.float32).reshape(2, 100)
    want = runtime.InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
