"""Target profiles: the edge CPUs edgepet builds bundles for, as data in one place.

A profile says what the CPU can do (architecture, ISA features), how a bundle for it
is quantized by default (bits, group size), how the LUT kernels run there (kernel,
packed layout, threads) and which toolchain builds the op library for it when it is
not the host. ``edgepet targets`` prints this table; the exporter reads its defaults.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgepet.quant.tensor import Bits


@dataclass(frozen=True)
class Toolchain:
    """How the op library is built for a target from an x86-64 Linux host.

    Compiler flags are not part of a profile: the op library is built for each
    architecture's baseline ISA and picks its vector kernel at run time, so the flags
    live in the build (``native/CMakeLists.txt``, ``cmake/*.cmake``) and nowhere else.
    """

    cxx: str
    #: How to run the target's binaries on the host for tests ("" when they run natively).
    emulator: str = ""
    note: str = ""


@dataclass(frozen=True)
class TargetProfile:
    """One edge CPU: what it is, and how edgepet quantizes and runs models on it."""

    name: str
    description: str
    arch: str  # "aarch64" or "x86_64", as platform.machine() spells it on Linux
    cpu: str
    isa_features: tuple[str, ...]
    #: Kernel the op library dispatches to on this CPU (the reference kernel is the fallback).
    kernel: str
    default_bits: Bits
    default_group_size: int
    threads: int
    toolchain: Toolchain
    #: Operating system: "linux", "android" or "macos" (decides which op library fits).
    os: str = "linux"
    missing_features: tuple[str, ...] = field(default=())

    @property
    def layout(self) -> str:
        """Packed weight layout: the op library's own (one layout for every target)."""
        from edgepet.kernels import LAYOUT

        return LAYOUT

    def runs_on_host(self) -> bool:
        """True when bundles for this target run on this machine's CPU architecture."""
        return host_arch() == self.arch

    def is_host_platform(self) -> bool:
        """True when this machine's op library is the one this target loads."""
        return self.runs_on_host() and self.os == _host_os()

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready data (as written into bundle manifests)."""
        data = asdict(self)
        data["isa_features"] = list(self.isa_features)
        data["missing_features"] = list(self.missing_features)
        data["layout"] = self.layout
        return data


def host_arch() -> str:
    """This machine's CPU architecture as profiles spell it ("x86_64", "aarch64")."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


_ARM_BIG_CORE = TargetProfile(
    name="rpi5",
    description="Raspberry Pi 5 (BCM2712, 8 GB)",
    arch="aarch64",
    cpu="4x Cortex-A76 @ 2.4 GHz",
    isa_features=("neon", "asimddp", "fp16"),
    missing_features=("i8mm", "sve"),
    kernel="neon",
    default_bits=2,
    default_group_size=64,
    threads=4,
    toolchain=Toolchain(
        cxx="aarch64-linux-gnu-g++",
        emulator="qemu-aarch64 (8.0 or newer) -L /usr/aarch64-linux-gnu",
        note="ONNX Runtime for aarch64 comes from its manylinux aarch64 wheel",
    ),
)
_APPLE = replace(
    _ARM_BIG_CORE,
    name="apple-m1",
    description="Apple M1 (macOS, arm64)",
    cpu="4 performance + 4 efficiency cores",
    missing_features=("i8mm", "bf16", "sve"),
    default_bits=4,
    default_group_size=128,
    os="macos",
    toolchain=Toolchain(cxx="clang++ (Xcode command line tools)",
                        note="built on the Mac itself: pip install edgepet"),
)
_X86 = TargetProfile(
    name="x86-avx2",
    description="x86-64 laptop or desktop with AVX2 (Haswell / Zen 1 or newer)",
    arch="x86_64",
    cpu="any AVX2 + FMA CPU",
    isa_features=("avx2", "fma", "f16c"),
    kernel="avx2",
    default_bits=4,
    default_group_size=64,
    threads=4,
    toolchain=Toolchain(cxx="g++"),
)

TARGETS: dict[str, TargetProfile] = {
    profile.name: profile
    for profile in (
        _ARM_BIG_CORE,
        replace(
            _ARM_BIG_CORE,
            name="android-arm64",
            description="Android phone, arm64-v8a (Armv8.2-A big cores, e.g. Cortex-A78)",
            cpu="big cores of a big.LITTLE SoC",
            missing_features=("sve",),
            os="android",
            toolchain=Toolchain(
                cxx="aarch64-linux-android24-clang++ (Android NDK r26 or newer)",
                emulator="adb shell on a device (qemu-aarch64 runs the Linux build)",
                note="link against onnxruntime-android's libonnxruntime.so",
            ),
        ),
        _APPLE,
        replace(
            _APPLE,
            name="apple-m2",
            description="Apple M2 (macOS, arm64)",
            isa_features=("neon", "asimddp", "fp16", "i8mm", "bf16"),
            missing_features=("sve",),
        ),
        _X86,
        replace(
            _X86,
            name="x86-avx512",
            description="x86-64 with AVX-512 (Ice Lake / Zen 4 or newer)",
            cpu="any AVX-512 F/BW CPU",
            isa_features=("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni"),
            kernel="avx512",
            default_group_size=128,
            threads=8,
        ),
    )
}


def get_target(name: str) -> TargetProfile:
    """The profile called ``name``; ValueError listing the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(
            f"unknown target {name!r} — known targets: {', '.join(TARGETS)} "
            "(`edgepet targets` describes them)"
        ) from None


def _host_os() -> str:
    return {"Darwin": "macos", "Linux": "linux"}.get(platform.system(), platform.system())


def host_target() -> TargetProfile:
    """The profile that best describes this machine (used when no target is named)."""
    if host_arch() == "aarch64":
        return TARGETS["apple-m1" if platform.system() == "Darwin" else "rpi5"]
    return TARGETS["x86-avx2"]


__all__ = ["TARGETS", "TargetProfile", "Toolchain", "get_target", "host_arch", "host_target"]
