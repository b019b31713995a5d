"""What the numbers were measured on: CPU, cores, clocks, temperature, OS, versions.

Everything is read, never guessed: a value the machine does not expose is ``None``
(and the report prints "not readable").
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

_SYS_CPU = Path("/sys/devices/system/cpu")
_THERMAL = Path("/sys/class/thermal")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (plus the Arm 'Hardware' line)."""
    text = _read(Path("/proc/cpuinfo")) or ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    """A human name for the CPU ("AMD EPYC", "Cortex-A76 ...", "Apple M2")."""
    info = _cpuinfo()
    for key in ("model name", "Model", "Hardware"):
        if info.get(key):
            return info[key]
    if sys.platform == "darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine()


def isa_features() -> list[str]:
    """ISA flags the kernel reports (x86 'flags', Arm 'Features'; macOS hw.optional)."""
    info = _cpuinfo()
    flags = info.get("flags") or info.get("Features") or ""
    if flags:
        return sorted(flags.split())
    if sys.platform == "darwin":
        text = _sysctl("-a") or ""
        return sorted(m.group(1) for m in re.finditer(r"hw\.optional\.(?:arm\.)?(\w+): 1", text))
    return []


#: The ISA features that decide which LUT kernel (and which peer kernel) runs.
KERNEL_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                   "avx_vnni", "asimd", "asimddp", "i8mm")


def cpu_summary() -> dict[str, Any]:
    """What every benchmark figure is printed with: CPU model, the kernel-deciding ISA
    features this CPU has, its core count and the load average right now."""
    have = set(isa_features())
    return {"model": cpu_model(), "isa": [f for f in KERNEL_FEATURES if f in have],
            "cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def _sysctl(name: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", name] if name != "-a" else ["sysctl", "-a"],
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def clocks() -> dict[str, Any]:
    """Governor and current frequency (MHz) per CPU, where cpufreq is readable."""
    governors: dict[str, str] = {}
    mhz: dict[str, float] = {}
    for cpu in sorted(_SYS_CPU.glob("cpu[0-9]*")):
        governor = _read(cpu / "cpufreq/scaling_governor")
        if governor:
            governors[cpu.name] = governor
        khz = _read(cpu / "cpufreq/scaling_cur_freq")
        if khz and khz.isdigit():
            mhz[cpu.name] = int(khz) / 1000
    return {
        "governor": sorted(set(governors.values())) or None,
        "frequency_mhz": mhz or None,
        "why_missing": None if governors or mhz else
        "no cpufreq in /sys (a VM or a kernel without cpufreq)",
    }


def temperatures() -> dict[str, float] | None:
    """Thermal zone temperatures in °C (Linux /sys/class/thermal), None when none."""
    zones: dict[str, float] = {}
    for zone in sorted(_THERMAL.glob("thermal_zone*")):
        milli = _read(zone / "temp")
        if milli and milli.lstrip("-").isdigit():
            zones[_read(zone / "type") or zone.name] = int(milli) / 1000
    return zones or None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (the load is part of every figure)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def transparent_hugepages() -> str | None:
    """Linux's transparent huge page mode (always / madvise / never), or None elsewhere.
    The op copies or collapses its weights into huge pages unless it is ``never``
    (docs/operator.md, "Huge pages"); SmolLM2-135M decoded 10-15 % faster with them on a
    Zen 4 VM."""
    mode = _read(Path("/sys/kernel/mm/transparent_hugepage/enabled"))
    if not mode or "[" not in mode:
        return None
    return mode[mode.index("[") + 1:mode.index("]")]


def state() -> dict[str, Any]:
    """What changes during a run: clocks, temperatures, load (taken before and after)."""
    return {"clocks": clocks(), "temperature_c": temperatures(), "load_average": load_average()}


def versions() -> dict[str, Any]:
    """edgepet, ONNX Runtime, numpy, Python and the op library's ABI version."""
    import numpy
    import onnxruntime

    from edgepet import __version__

    found: dict[str, Any] = {"edgepet": __version__, "onnxruntime": onnxruntime.__version__,
                             "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        from edgepet.runtime.bundle import op_abi_version

        found["op_abi_version"] = op_abi_version()
    except (OSError, AttributeError, FileNotFoundError) as error:
        found["op_abi_version"] = None
        found["op_library_error"] = str(error)
    return found


def describe() -> dict[str, Any]:
    """The environment record of a report (``cpu_info`` named as llama-bench names it)."""
    return {
        "cpu_info": cpu_model(),
        "isa_features": isa_features(),
        "n_cpus": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "os_version": platform.version(),
        "transparent_hugepages": transparent_hugepages(),
        "hostname": platform.node(),
        "versions": versions(),
    }


__all__ = ["clocks", "cpu_model", "describe", "isa_features", "load_average", "state",
           "temperatures", "transparent_hugepages", "versions"]
