"""Finding the op library: this machine's, and the one cross-built for aarch64."""

import platform
import shutil
from pathlib import Path

import pytest

from edgepet.runtime import op_library_path

ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def elf_machine(path: str) -> int:
    header = Path(path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_host_library_is_for_this_machine():
    if platform.machine() in ELF_MACHINE:
        assert elf_machine(op_library_path()) == ELF_MACHINE[platform.machine()]


@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("aarch64-linux-gnu-g++"),
                    reason="the aarch64 library is cross-built on x86-64 hosts with the compiler")
def test_aarch64_library_is_built_beside_the_host_one():
    assert elf_machine(op_library_path("aarch64")) == ELF_MACHINE["aarch64"]


def test_unknown_architecture_says_what_exists():
    with pytest.raises(FileNotFoundError, match="not for riscv64"):
        op_library_path("riscv64")


def test_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPET_ORT_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        op_library_path()
