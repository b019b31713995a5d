"""The decoder ops' C++ tests (native/tests/test_decoder_kernels.cc: attention and SwiGLU,
every vector set against the reference and a direct computation), on this machine and,
cross-built, on aarch64 under qemu; and SwiGLU from the aarch64 op library in ONNX
Runtime's aarch64 build."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepet.exporters.onnx import DOMAIN, ONNX_OPSET

ROOT = Path(__file__).resolve().parents[2]


def _build(build: Path, *extra: str, target: str = "test_decoder_kernels") -> None:
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DEDGEPET_BUILD_TESTS=ON", "-DEDGEPET_BUILD_PYTHON=OFF",
                 "-DEDGEPET_CROSS_AARCH64=OFF", "-DEDGEPET_CROSS_APPLE=OFF",
                 "-DEDGEPET_BUILD_RUNNER=OFF", *extra]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--parallel", "2", "--target", target],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_decoder_kernel_suite_passes_here(tmp_path):
    _build(tmp_path, "-DEDGEPET_BUILD_ORT_OP=OFF")
    run = subprocess.run([str(tmp_path / "native" / "test_decoder_kernels")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout


def test_decoder_kernels_and_swiglu_op_on_aarch64(tmp_path, aarch64_tools, ort_headers,
                                                  aarch64_run, aarch64_c_app):
    build = tmp_path / "build"
    _build(build, f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake/aarch64-linux-gnu.cmake'}",
           f"-DEDGEPET_ORT_INCLUDE_DIR={ort_headers}", target="all")
    run = aarch64_run(aarch64_tools, build / "native" / "test_decoder_kernels")
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed (vector ops: neon, reference)" in run.stdout

    node = helper.make_node("SwiGLU", ["x"], ["y"], name="act", domain=DOMAIN)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 100])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = tmp_path / "swiglu.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)]).SerializeToString())
    app = aarch64_c_app(build / "native" / "libedgepet_ort.so", model, 2, 100)
    assert app.returncode == 0, app.stderr
    got = np.array([float(v) for v in app.stdout.split()], np.float32).reshape(2, 50)
    x = np.sin(np.arange(200, dtype=np.float64)).reshape(2, 100)
    gate, up = x[:, :50], x[:, 50:]
    np.testing.assert_allclose(got, gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)
