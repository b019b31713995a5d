"""Energy meters: read, never estimated — or ``unavailable`` with the reason.

Every meter measures an idle baseline just before a run (the same meter, the same
seconds of sleep) and the harness subtracts it, so a figure is the energy the
inference added, not what the board spends sitting there.

=================  =========================================================  ========
meter              source                                                     kind
=================  =========================================================  ========
rapl               Linux powercap ``intel-rapl:N/energy_uj`` (cumulative µJ)  measured
rpi5-pmic          ``vcgencmd pmic_read_adc``: Σ V×I over the PMIC rails      measured
android-battery    ``/sys/class/power_supply/battery`` current × voltage      measured
powermetrics       macOS ``powermetrics --samplers cpu_power`` ("CPU Power")  estimate
csv:FILE           an external meter's log (``time,watts``/``time,volts,amps``) measured
=================  =========================================================  ========
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

METERS = ("rapl", "rpi5-pmic", "android-battery", "powermetrics")


class MeterUnavailable(Exception):
    """No meter of this kind can be read here; the message says why and what to do."""


@dataclass
class Reading:
    """Energy over one window of wall-clock time."""

    joules: float
    seconds: float
    start: float  # unix time
    end: float
    samples: int = 0

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else math.nan


@dataclass
class EnergyMeter:
    """Base: ``begin()`` then ``end() -> Reading``; ``describe()`` for the report."""

    name: str = ""
    method: str = ""
    limits: str = ""
    estimate: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        raise NotImplementedError

    def end(self) -> Reading:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the meter holds (processes, threads)."""

    def describe(self) -> dict[str, Any]:
        """The report's record of how energy was measured."""
        return {"name": self.name, "status": "estimate" if self.estimate else "measured",
                "method": self.method, "limits": self.limits,
                "idle_baseline_subtracted": True, "notes": self.notes}


# --- RAPL ------------------------------------------------------------------------------------


class RaplMeter(EnergyMeter):
    """Linux powercap RAPL: package domains ``intel-rapl:N`` (AMD exposes the same files)."""

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap") -> None:
        super().__init__(
            name="rapl", method="Linux powercap RAPL energy_uj counters (package domains)",
            limits="CPU package (cores, caches, memory controller) only: not DRAM on most "
                   "CPUs, not the board, fans or display; a VM sees the host's whole package")
        self.root = Path(root)
        self.domains = sorted(p for p in self.root.glob("intel-rapl:*")
                              if re.fullmatch(r"intel-rapl:\d+", p.name))
        if not self.domains:
            raise MeterUnavailable(f"no RAPL domains in {self.root} (no powercap driver: "
                                   "a VM, an Arm board, or intel_rapl not loaded)")
        self.ranges = []
        for domain in self.domains:
            try:
                self.ranges.append(int((domain / "max_energy_range_uj").read_text()))
                (domain / "energy_uj").read_text()
            except PermissionError:
                raise MeterUnavailable(
                    f"{domain}/energy_uj is readable by root only (Linux 5.10+, "
                    "CVE-2020-8694) — run as root, or `sudo chmod o+r "
                    "/sys/class/powercap/intel-rapl:*/energy_uj` for this boot") from None
            except (OSError, ValueError) as error:
                raise MeterUnavailable(f"{domain} cannot be read: {error}") from None
        self.notes = {"domains": [(d / "name").read_text().strip() if (d / "name").exists()
                                  else d.name for d in self.domains]}
        self._start: tuple[float, list[int]] | None = None

    def _counters(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def begin(self) -> None:
        self._start = (time.time(), self._counters())

    def end(self) -> Reading:
        t1, c1 = time.time(), self._counters()
        t0, c0 = self._start
        total = sum(rapl_delta(a, b, r) for a, b, r in zip(c0, c1, self.ranges, strict=True))
        return Reading(total / 1e6, t1 - t0, t0, t1, samples=2)


def rapl_delta(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """µJ between two readings of a counter that wraps at ``max_energy_range_uj``."""
    return end_uj - start_uj if end_uj >= start_uj else end_uj + max_range_uj - start_uj


# --- sampled power -----------------------------------------------------------------------------


class SampledMeter(EnergyMeter):
    """A meter that reads power (W) at intervals; energy is its time integral."""

    interval_s = 0.1

    def power_watts(self) -> float:
        raise NotImplementedError

    def begin(self) -> None:
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._samples.append((time.time(), self.power_watts()))
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._samples.append((time.time(), self.power_watts()))
            except Exception as error:  # noqa: BLE001 — reported at end()
                self._error = error
                return

    def end(self) -> Reading:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise MeterUnavailable(f"{self.name} stopped reading: {self._error}")
        self._samples.append((time.time(), self.power_watts()))
        return integrate(self._samples)


def integrate(samples: Sequence[tuple[float, float]],
              start: float | None = None, end: float | None = None) -> Reading:
    """Trapezoidal ∫P dt over ``(time, watts)`` samples, clipped to [start, end]."""
    points = sorted(samples)
    if start is None:
        start = points[0][0]
    if end is None:
        end = points[-1][0]
    if len(points) < 2 or points[0][0] > start + 1e-6 or points[-1][0] < end - 1e-6:
        have = f"{points[0][0]:.3f}..{points[-1][0]:.3f}" if points else "nothing"
        raise MeterUnavailable(f"the power samples cover {have}, the window is "
                               f"{start:.3f}..{end:.3f}")

    def at(t: float) -> float:
        for (ta, pa), (tb, pb) in zip(points, points[1:], strict=False):
            if ta <= t <= tb:
                return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)
        return points[-1][1]

    inner = [(t, p) for t, p in points if start < t < end]
    curve = [(start, at(start)), *inner, (end, at(end))]
    joules = sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in zip(curve, curve[1:],
                                                                         strict=False))
    return Reading(joules, end - start, start, end, samples=len(inner) + 2)


Runner = Callable[[Sequence[str]], str]


def _run(command: Sequence[str]) -> str:
    return subprocess.run(list(command), capture_output=True, text=True, check=True,
                          timeout=10).stdout


def parse_pmic_read_adc(text: str) -> dict[str, dict[str, float]]:
    """``vcgencmd pmic_read_adc`` output -> {rail: {"A": amps, "V": volts}}.

    Lines look like ``   VDD_CORE_A current(7)=2.01234000A`` and
    ``   VDD_CORE_V volt(15)=0.88000000V``; a rail's current and voltage lines share its
    name up to the ``_A``/``_V`` suffix.
    """
    rails: dict[str, dict[str, float]] = {}
    for match in re.finditer(r"^\s*(\S+)_([AV])\s+\w+\(\d+\)=([-+0-9.eE]+)[AV]\s*$", text,
                             re.MULTILINE):
        rails.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
    return rails


def pmic_watts(rails: dict[str, dict[str, float]]) -> float:
    """Σ V×I over the rails that report both a current and a voltage."""
    return sum(r["A"] * r["V"] for r in rails.values() if "A" in r and "V" in r)


class Rpi5PmicMeter(SampledMeter):
    """Raspberry Pi 5: the PMIC's rail ADCs through ``vcgencmd pmic_read_adc``."""

    interval_s = 0.2  # one vcgencmd call takes tens of ms

    def __init__(self, run: Runner = _run) -> None:
        super().__init__(
            name="rpi5-pmic", method="vcgencmd pmic_read_adc: Σ V×I over the PMIC rails",
            limits="board rails fed by the PMIC only: not USB devices, HATs, NVMe or the fan "
                   "on the 5 V input; ADC readings every 0.2 s")
        self.run = run
        if run is _run and shutil.which("vcgencmd") is None:
            raise MeterUnavailable("vcgencmd not found (not a Raspberry Pi OS install)")
        try:
            rails = parse_pmic_read_adc(run(["vcgencmd", "pmic_read_adc"]))
        except (OSError, subprocess.SubprocessError) as error:
            raise MeterUnavailable(f"vcgencmd pmic_read_adc failed: {error} (a Pi 5 and "
                                   "firmware from 2023-10 or later are needed)") from None
        paired = [name for name, r in rails.items() if "A" in r and "V" in r]
        if not paired:
            raise MeterUnavailable("vcgencmd pmic_read_adc printed no rail with both a "
                                   "current and a voltage (not a Raspberry Pi 5?)")
        self.notes = {"rails": sorted(paired), "throttled_before": self.throttled()}

    def throttled(self) -> str | None:
        """``vcgencmd get_throttled`` value (0x0: never throttled or under-volted)."""
        try:
            text = self.run(["vcgencmd", "get_throttled"])
        except (OSError, subprocess.SubprocessError):
            return None
        match = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
        return match.group(1) if match else None

    def power_watts(self) -> float:
        return pmic_watts(parse_pmic_read_adc(self.run(["vcgencmd", "pmic_read_adc"])))

    def close(self) -> None:
        self.notes["throttled_after"] = self.throttled()


class AndroidBatteryMeter(SampledMeter):
    """Android: battery current × voltage from sysfs, on battery power only."""

    interval_s = 0.25

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/power_supply/battery") -> None:
        super().__init__(
            name="android-battery",
            method="power_supply/battery current_now × voltage_now (the whole phone)",
            limits="the whole device (screen, radios, other apps) as the fuel gauge sees it; "
                   "gauges update every 0.25-1 s and some average over longer windows")
        self.root = Path(root)
        if not (self.root / "current_now").exists():
            raise MeterUnavailable(f"{self.root}/current_now does not exist (not Android, "
                                   "or the vendor names the battery differently)")
        status = self._read("status")
        if status not in ("Discharging", "Not charging"):
            raise MeterUnavailable(
                f"the battery is {status or 'in an unknown state'} — unplug the phone (or "
                "`adb shell dumpsys battery unplug` with USB power cut): a charging "
                "battery's current says nothing about the load")
        self.unit_scale, self.sign_note = battery_units(int(self._read("current_now")))
        self.notes = {"status": status, "current_unit": self.sign_note}

    def _read(self, name: str) -> str:
        try:
            return (self.root / name).read_text().strip()
        except PermissionError:
            raise MeterUnavailable(f"{self.root / name} is not readable by this user "
                                   "(SELinux on some vendors' builds)") from None

    def power_watts(self) -> float:
        amps = abs(int(self._read("current_now"))) * self.unit_scale
        volts = int(self._read("voltage_now")) / 1e6
        return amps * volts


def battery_units(current_now: int) -> tuple[float, str]:
    """Amps per unit of ``current_now`` and what was detected.

    The kernel ABI says µA, and most gauges follow it; a few vendors report mA. Below
    20 000 in magnitude a phone under load cannot be drawing µA (20 mA would be less
    than its screen alone), so such values are read as mA. The sign also differs by
    vendor (negative while discharging on Pixel/Qualcomm gauges, positive on others);
    the magnitude is used and the sign recorded.
    """
    sign = "negative" if current_now < 0 else "positive"
    if abs(current_now) < 20_000:
        return 1e-3, f"mA (|current_now|={abs(current_now)}), {sign} while discharging"
    return 1e-6, f"µA, {sign} while discharging"


def parse_powermetrics(text: str) -> list[float]:
    """Watts from ``powermetrics --samplers cpu_power`` output ("CPU Power: 1234 mW")."""
    return [int(m.group(1)) / 1000 for m in re.finditer(r"^CPU Power:\s*(\d+)\s*mW", text,
                                                         re.MULTILINE)]


class PowermetricsMeter(SampledMeter):
    """macOS: ``powermetrics``' CPU power, which Apple documents as an estimate."""

    def __init__(self, interval_ms: int = 100) -> None:
        super().__init__(
            name="powermetrics", estimate=True,
            method=f"sudo powermetrics --samplers cpu_power -i {interval_ms} ('CPU Power')",
            limits="Apple's estimate from its power model, not a measurement; CPU only")
        if sys.platform != "darwin":
            raise MeterUnavailable("powermetrics is macOS only")
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True)
        if probe.returncode != 0:
            raise MeterUnavailable("powermetrics needs root: run `sudo -v` first or allow "
                                   "it in sudoers (NOPASSWD for /usr/bin/powermetrics)")
        self.interval_ms = interval_ms
        self._process: subprocess.Popen | None = None
        self._last = 0.0

    def begin(self) -> None:
        self._process = subprocess.Popen(
            ["sudo", "-n", "powermetrics", "--samplers", "cpu_power", "-i",
             str(self.interval_ms)], stdout=subprocess.PIPE, text=True)
        self._lines: list[tuple[float, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(2 * self.interval_ms / 1000)
        self._t0 = time.time()

    def _read(self) -> None:
        for line in self._process.stdout:
            for watts in parse_powermetrics(line):
                self._lines.append((time.time(), watts))

    def end(self) -> Reading:
        t1 = time.time()
        time.sleep(2 * self.interval_ms / 1000)
        self._process.terminate()
        self._process.wait()
        return integrate(self._lines, self._t0, t1)


# --- external CSV ----------------------------------------------------------------------------


def read_power_csv(path: str | os.PathLike[str]) -> list[tuple[float, float]]:
    """``(unix time, watts)`` rows of an external meter's CSV.

    Columns: ``time,watts`` or ``time,volts,amps`` (a header row names them); time is
    unix seconds or ISO 8601 (naive times are local time, as loggers write them).
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise MeterUnavailable(f"{path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if header[:2] == ["time", "watts"]:
        power = lambda r: float(r[1])  # noqa: E731
    elif header[:3] == ["time", "volts", "amps"]:
        power = lambda r: float(r[1]) * float(r[2])  # noqa: E731
    else:
        raise MeterUnavailable(f"{path}: the first row must be a header 'time,watts' or "
                               f"'time,volts,amps', not {','.join(rows[0])!r}")
    samples = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            samples.append((_timestamp(row[0]), power(row)))
        except (ValueError, IndexError):
            raise MeterUnavailable(f"{path} line {line}: cannot read {','.join(row)!r}") from None
    return samples


def _timestamp(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


class CsvMeter(EnergyMeter):
    """An external meter that logs to a CSV; windows are matched by wall-clock time."""

    wait_s = 3.0

    def __init__(self, path: str) -> None:
        super().__init__(
            name="csv", method=f"external meter log {path}, aligned by timestamps",
            limits="whatever the meter is wired to; clocks of the logger and this machine "
                   "must agree (NTP), and the log's sample rate bounds the resolution")
        self.path = path
        if not Path(path).is_file():
            raise MeterUnavailable(f"the meter log {path} does not exist")
        read_power_csv(path)  # the header is checked now, not after the run
        self.notes = {"file": str(path)}

    def begin(self) -> None:
        self._t0 = time.time()

    def end(self) -> Reading:
        t1 = time.time()
        deadline = t1 + self.wait_s  # a logger flushes its rows late
        while True:
            samples = read_power_csv(self.path)
            if samples and max(t for t, _ in samples) >= t1 or time.time() > deadline:
                return integrate(samples, self._t0, t1)
            time.sleep(0.1)


# --- choosing ---------------------------------------------------------------------------------


def open_meter(spec: str) -> EnergyMeter:
    """The meter ``spec`` names (auto|rapl|rpi5-pmic|android-battery|powermetrics|csv:FILE).

    Raises :class:`MeterUnavailable` with every reason when none can be read.
    """
    makers: dict[str, Callable[[], EnergyMeter]] = {
        "rapl": RaplMeter, "rpi5-pmic": Rpi5PmicMeter,
        "android-battery": AndroidBatteryMeter, "powermetrics": PowermetricsMeter,
    }
    if spec.startswith("csv:"):
        return CsvMeter(spec[4:])
    if spec in makers:
        return makers[spec]()
    if spec != "auto":
        raise ValueError(f"--energy {spec!r}: use auto, none, csv:FILE or one of "
                         f"{', '.join(METERS)}")
    reasons = []
    for name, make in makers.items():
        try:
            return make()
        except MeterUnavailable as error:
            reasons.append(f"{name}: {error}")
    raise MeterUnavailable("no energy meter here — " + "; ".join(reasons))


def measure_idle(meter: EnergyMeter, seconds: float) -> Reading:
    """The meter's reading over ``seconds`` of doing nothing (the idle baseline)."""
    meter.begin()
    time.sleep(seconds)
    return meter.end()


__all__ = ["AndroidBatteryMeter", "CsvMeter", "EnergyMeter", "METERS", "MeterUnavailable",
           "PowermetricsMeter", "RaplMeter", "Reading", "Rpi5PmicMeter", "battery_units",
           "integrate", "measure_idle", "open_meter", "parse_pmic_read_adc",
           "parse_powermetrics", "pmic_watts", "rapl_delta", "read_power_csv"]
