#!/usr/bin/env bash
# The C++ kernel tests and the ONNX Runtime op library under AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake option EDGEPET_SANITIZE; docs/building.md).
#   bash scripts/sanitize.sh [BUILD_DIR]      (default build/sanitize)
# Any finding aborts the run with the sanitizer's report: exit 0 means clean.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/sanitize}
python=${PYTHON:-python3}

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DEDGEPET_SANITIZE=ON -DEDGEPET_BUILD_TESTS=ON -DEDGEPET_BUILD_PYTHON=OFF \
  -DEDGEPET_BUILD_RUNNER=OFF -DEDGEPET_CROSS_AARCH64=OFF >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target test_kernels test_decoder_kernels edgepet_ort

echo "== C++ kernel tests (every kernel of this CPU, edge cases included)"
"$build/native/test_kernels"
echo "== C++ decoder-op kernel tests (attention, SwiGLU)"
"$build/native/test_decoder_kernels"

# The op library inside ONNX Runtime: the op's own tests with the sanitized library in
# place of the installed one. Python and ONNX Runtime are not instrumented, so the
# sanitizer runtimes are preloaded; leak checking is off (the interpreter's own
# allocations at exit are not ours).
echo "== the op library inside ONNX Runtime"
runtimes="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libubsan.so)"
LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0 \
  EDGEPET_ORT_LIBRARY="$(cd "$build" && pwd)/native/libedgepet_ort.so" \
  "$python" -m pytest -q -p no:cacheprovider tests/native/test_op_contract.py \
  tests/runtime/test_lut_matmul_op.py tests/runtime/test_decoder_ops.py
