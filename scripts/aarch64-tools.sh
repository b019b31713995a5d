#!/usr/bin/env bash
# Fetches what building and testing for aarch64 on an x86-64 Debian host needs, into
# build/tools (nothing is installed system-wide except the cross compiler):
#   - g++-aarch64-linux-gnu (Debian package; installed with apt-get when run as root);
#   - qemu-aarch64 >= 8 from Debian trixie's qemu-user (Debian 12's 7.2 crashes in ONNX
#     Runtime's CPU detection), unpacked, not installed;
#   - ONNX Runtime's aarch64 shared library, from its manylinux aarch64 wheel.
# Idempotent. Prints the paths the tests read (EDGEPET_QEMU_AARCH64,
# EDGEPET_ORT_AARCH64_LIB_DIR); tests/native/test_aarch64.py also finds them here.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/build/tools"
mkdir -p "$tools"

if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
  else
    echo "aarch64-linux-gnu-g++ missing: sudo apt-get install g++-aarch64-linux-gnu" >&2
    exit 1
  fi
fi

qemu="$tools/qemu/usr/bin/qemu-aarch64"
if [ ! -x "$qemu" ]; then
  apt_root="$tools/apt"
  mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial" "$tools/deb"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt_root/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt_root/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache=$apt_root/cache" -o Debug::NoLocking=1)
  apt-get "${opts[@]}" update -qq
  (cd "$tools/deb" && apt-get "${opts[@]}" download qemu-user 2>/dev/null)
  dpkg -x "$tools"/deb/qemu-user_*.deb "$tools/qemu"
fi

ort_lib="$tools/onnxruntime-aarch64/lib"
if [ ! -e "$ort_lib/libonnxruntime.so.1" ]; then
  version=$(python3 -c "import onnxruntime; print(onnxruntime.__version__)")
  wheels="$tools/onnxruntime-aarch64/wheel"
  mkdir -p "$wheels" "$ort_lib"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux2014_aarch64 "onnxruntime==$version" -d "$wheels"
  python3 - "$wheels" "$ort_lib" <<'PY'
import sys, zipfile, pathlib
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(wheels.glob("onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if "/libonnxruntime.so." in n)
    (out / pathlib.Path(name).name).write_bytes(z.read(name))
PY
  full=$(cd "$ort_lib" && ls libonnxruntime.so.1.*)
  ln -sf "$full" "$ort_lib/libonnxruntime.so.1"
  ln -sf "$full" "$ort_lib/libonnxruntime.so"
fi

echo "EDGEPET_QEMU_AARCH64=$qemu"
echo "EDGEPET_ORT_AARCH64_LIB_DIR=$ort_lib"
