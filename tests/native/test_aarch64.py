"""aarch64: the NEON kernel against the reference under qemu, and the op library
cross-built for aarch64 inside ONNX Runtime's own aarch64 build."""

import subprocess
from pathlib import Path

import numpy as np

from edgepet import runtime
from edgepet.exporters.onnx import linear_model
from edgepet.quant import quantize

ROOT = Path(__file__).resolve().parents[2]


def _cross_build(build: Path, headers: Path, *extra: str, target: str = "all") -> None:
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake/aarch64-linux-gnu.cmake'}",
         "-DEDGEPET_BUILD_PYTHON=OFF", "-DEDGEPET_BUILD_TESTS=ON",
         f"-DEDGEPET_ORT_INCLUDE_DIR={headers}", *extra],
        check=True, capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(build), "--parallel", "2", "--target", target],
                   check=True, capture_output=True)


def test_neon_kernel_and_op_library_on_aarch64(tmp_path, aarch64_tools, ort_headers,
                                               aarch64_run, aarch64_c_app):
    build = tmp_path / "build"
    _cross_build(build, ort_headers)

    kernels = aarch64_run(aarch64_tools, build / "native" / "test_kernels")
    assert kernels.returncode == 0, kernels.stdout + kernels.stderr
    assert "0 failed (kernels: reference, neon)" in kernels.stdout

    rng = np.random.default_rng(0)
    # 3 bits: the LUT path; 4 bits: the nibble-code dot path (docs/operator.md).
    for bits, symmetric in [(3, False), (4, True), (4, False)]:
        qt = quantize(rng.standard_normal((40, 100), dtype=np.float32), bits, 32,
                      symmetric=symmetric)
        model = tmp_path / "model.onnx"
        model.write_bytes(linear_model(qt).SerializeToString())
        run = aarch64_c_app(build / "native" / "libedgepet_ort.so", model, 2, 100)
        assert run.returncode == 0, run.stderr
        got = np.array([float(v) for v in run.stdout.split()], np.float32).reshape(2, 40)
        x = np.sin(np.arange(200, dtype=np.float64)).astype(np.float32).reshape(2, 100)
        want = runtime.InferenceSession(model).run(None, {"x": x})[0]
        # x86 and aarch64 build identical tables and int8 activations; only float
        # rounding differs.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_neon_dot_product_build_of_the_3_and_4bit_kernel_on_aarch64(tmp_path, aarch64_tools,
                                                                    ort_headers, aarch64_run):
    """Built for a CPU with the dot-product extension (sdot, e.g. Cortex-A76), the 3- and
    4-bit kernel takes vdotq_s32 instead of widening multiplies; qemu runs both (the C++
    tests cover both widths' shapes against the reference)."""
    build = tmp_path / "build"
    _cross_build(build, ort_headers, "-DCMAKE_CXX_FLAGS=-march=armv8.2-a+dotprod",
                 target="test_kernels")
    kernels = aarch64_run(aarch64_tools, build / "native" / "test_kernels")
    assert kernels.returncode == 0, kernels.stdout + kernels.stderr
    assert "0 failed (kernels: reference, neon)" in kernels.stdout
