"""Apple Silicon: the op library and edgepet-run cross-built with zig are Mach-O arm64,
the library exports RegisterCustomOps, and apple-m bundles carry them. Nothing here can
run them (no Mac)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MH_MAGIC_64, CPU_TYPE_ARM64 = 0xFEEDFACF, 0x0100000C
MH_EXECUTE, MH_DYLIB, LC_SYMTAB = 2, 6, 0x2


def macho(path: Path) -> tuple[int, int, set[str]]:
    """(cpu type, file type, exported symbol names) of a thin 64-bit Mach-O file."""
    data = path.read_bytes()
    magic, cputype, _, filetype, ncmds = struct.unpack_from("<IiiII", data)
    assert magic == MH_MAGIC_64, f"{path} is not a 64-bit little-endian Mach-O file"
    exported, offset = set(), 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, offset)
        if cmd == LC_SYMTAB:
            symoff, nsyms, stroff, _ = struct.unpack_from("<IIII", data, offset + 8)
            for i in range(nsyms):
                strx, ntype = struct.unpack_from("<IB", data, symoff + 16 * i)
                if ntype & 0x01 and ntype & 0x0E == 0x0E:  # N_EXT, defined in a section
                    end = data.index(b"\0", stroff + strx)
                    exported.add(data[stroff + strx:end].decode())
        offset += size
    return cputype, filetype, exported


@pytest.fixture
def apple_build(tmp_path, ort_headers):
    pytest.importorskip("ziglang", reason="pip install ziglang (the zig cross compiler)")
    out = tmp_path / "apple"
    done = subprocess.run(["bash", str(ROOT / "native/runner/cross_apple.sh"), str(out),
                           str(ort_headers)], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_zig_builds_a_macos_arm64_op_library_and_runner(apple_build):
    cputype, filetype, exported = macho(apple_build / "libedgepet_ort.dylib")
    assert cputype == CPU_TYPE_ARM64 and filetype == MH_DYLIB
    assert {"_RegisterCustomOps", "_edgepet_op_abi_version"} <= exported
    assert not any("edgepet" in s and "Gemm" in s for s in exported)  # internals hidden
    cputype, filetype, _ = macho(apple_build / "edgepet-run")
    assert cputype == CPU_TYPE_ARM64 and filetype == MH_EXECUTE
    if shutil.which("file"):
        kind = subprocess.run(["file", str(apple_build / "edgepet-run")],
                              capture_output=True, text=True).stdout
        assert "Mach-O 64-bit" in kind and "arm64" in kind


def test_an_apple_bundle_carries_the_zig_built_files_of_this_install(tmp_path):
    pytest.importorskip("torch")
    from edgepet.exporters import bundle as bundle_writer
    from edgepet.exporters.pipeline import export
    from edgepet.targets import get_target

    files = bundle_writer.native_files(get_target("apple-m1"))
    if files.library is None:
        pytest.skip("this edgepet was built without zig (EDGEPET_CROSS_APPLE=ON pip install)")
    bundle = export("example:mlp", tmp_path / "apple", target="apple-m1", bits=4,
                    quantizer="rtn")
    op = bundle.manifest["operator"]
    cputype, filetype, exported = macho(bundle.path / op["library"])
    assert (cputype, filetype) == (CPU_TYPE_ARM64, MH_DYLIB)
    assert {"_RegisterCustomOps", "_edgepet_op_abi_version"} <= exported
    if files.runner is not None:
        assert macho(bundle.path / op["runner"])[:2] == (CPU_TYPE_ARM64, MH_EXECUTE)
    assert [m["what"] for m in op["missing"]] == ([] if files.runner else ["edgepet-run"])
