"""The standalone C++ kernel tests (native/tests), built with CMake and run here.

They need neither Python bindings nor ONNX Runtime, so the same sources build for
aarch64 and run under qemu.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cpp_kernel_suite_passes(tmp_path):
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Release",
        "-DEDGEPET_BUILD_TESTS=ON", "-DEDGEPET_BUILD_PYTHON=OFF", "-DEDGEPET_BUILD_ORT_OP=OFF",
    ]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(tmp_path), "--parallel", "2"], check=True,
                   capture_output=True)
    run = subprocess.run([str(tmp_path / "native" / "test_kernels")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failed" in run.stdout
