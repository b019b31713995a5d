#!/usr/bin/env bash
# Cross-build edgepet's ONNX Runtime op library and edgepet-run for Apple Silicon
# (arm64 macOS) with zig (PyPI: pip install ziglang) — no Mac, no Xcode needed.
#
#   native/runner/cross_apple.sh OUT_DIR ORT_INCLUDE_DIR
#
# Writes OUT_DIR/libedgepet_ort.dylib (Mach-O arm64, exports RegisterCustomOps) and
# OUT_DIR/edgepet-run. Nothing here can run them: they are checked by their headers and
# symbol tables (tests/device_tests/test_apple_cross.py), not executed.
set -euo pipefail
out=${1:?usage: cross_apple.sh OUT_DIR ORT_INCLUDE_DIR}
ort=${2:?usage: cross_apple.sh OUT_DIR ORT_INCLUDE_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
# ZIG: a zig command (e.g. "zig", or "python3 -m ziglang"); default: PyPI's ziglang.
read -r -a zig <<< "${ZIG:-$python -m ziglang}"
target=(-target aarch64-macos -mcpu=apple_m1)
mkdir -p "$out"

# The op library: the same sources and flags native/CMakeLists.txt uses for aarch64.
sources=(kernels/pack.cc kernels/reference.cc kernels/gemm.cc kernels/dispatch.cc
         kernels/neon.cc kernels/dot4_gemm.cc kernels/dot4_reference.cc kernels/dot4_neon.cc
         kernels/attention.cc kernels/attention_reference.cc kernels/attention_neon.cc
         thread_pool.cc ort/register.cc ort/lut_matmul_op.cc ort/decoder_ops.cc ort/ort_util.cc)
"${zig[@]}" c++ "${target[@]}" -std=c++17 -O2 -fPIC -shared -fvisibility=hidden \
  -DEDGEPET_HAVE_NEON -I"$root/native/src" -I"$root/native/include" -I"$ort" \
  "${sources[@]/#/$root/native/src/}" -Wl,-undefined,dynamic_lookup \
  -o "$out/libedgepet_ort.dylib"

# The runner: ONNX Runtime is dlopen'ed at run time, so headers are all it needs.
"${zig[@]}" c++ "${target[@]}" -std=c++17 -O2 -Wall -Wextra -I"$ort" \
  "$root/native/runner/edgepet_run.cc" -o "$out/edgepet-run"
echo "$out/libedgepet_ort.dylib"
echo "$out/edgepet-run"
