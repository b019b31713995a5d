"""Energy meters: parsers against recorded-format fixtures, integration, idle baselines.

The fixtures are written from the documented formats (fixtures/README.md): no Pi 5,
phone or Mac is reachable here, and this VM has no RAPL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgepet.device_tests import energy, harness

FIXTURES = Path(__file__).with_name("fixtures")


# --- RAPL ---------------------------------------------------------------------------------------


def _rapl_tree(root: Path, counters: dict[str, int], max_range: int = 262143328850) -> None:
    for name, value in counters.items():
        domain = root / name
        domain.mkdir(parents=True)
        (domain / "name").write_text("package-0\n" if name.count(":") == 1 else "core\n")
        (domain / "energy_uj").write_text(f"{value}\n")
        (domain / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_rapl_counter_wraps_at_max_energy_range():
    assert energy.rapl_delta(100, 350, 1000) == 250
    assert energy.rapl_delta(900, 50, 1000) == 150  # wrapped once


def test_rapl_reads_package_domains_only_and_handles_wrap(tmp_path):
    _rapl_tree(tmp_path, {"intel-rapl:0": 999_000, "intel-rapl:0:0": 5}, max_range=1_000_000)
    meter = energy.RaplMeter(tmp_path)
    assert [d.name for d in meter.domains] == ["intel-rapl:0"]  # subdomain not double-counted
    meter.begin()
    (tmp_path / "intel-rapl:0/energy_uj").write_text("4000\n")  # wrapped: +5000 µJ
    reading = meter.end()
    assert reading.joules == pytest.approx(0.005)


def test_rapl_without_permission_says_how_to_get_it(tmp_path, monkeypatch):
    _rapl_tree(tmp_path, {"intel-rapl:0": 1})
    real = Path.read_text

    def deny(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(energy.MeterUnavailable, match="root only.*chmod"):
        energy.RaplMeter(tmp_path)


def test_no_rapl_is_unavailable(tmp_path):
    with pytest.raises(energy.MeterUnavailable, match="no RAPL domains"):
        energy.RaplMeter(tmp_path)


# --- Raspberry Pi 5 PMIC ------------------------------------------------------------------------


def _pmic_runner(calls=None):
    text = (FIXTURES / "rpi5_pmic_read_adc.txt").read_text()

    def run(command):
        if calls is not None:
            calls.append(list(command))
        return text if command[1] == "pmic_read_adc" else "throttled=0x50000\n"

    return run


def test_pmic_pairs_current_and_voltage_lines_by_rail_name():
    rails = energy.parse_pmic_read_adc((FIXTURES / "rpi5_pmic_read_adc.txt").read_text())
    assert rails["VDD_CORE"] == {"A": pytest.approx(0.661), "V": pytest.approx(0.88007)}
    assert "A" not in rails["EXT5V"] and "A" not in rails["BATT"]  # voltage only: no power
    expected = sum(r["A"] * r["V"] for r in rails.values() if len(r) == 2)
    assert energy.pmic_watts(rails) == pytest.approx(expected)
    assert expected == pytest.approx(1.6574, abs=1e-4)  # Σ V×I of the 7 powered rails


def test_pmic_meter_integrates_samples_and_records_throttling():
    calls = []
    meter = energy.Rpi5PmicMeter(run=_pmic_runner(calls))
    meter.interval_s = 0.02
    meter.begin()
    time.sleep(0.2)
    reading = meter.end()
    meter.close()
    watts = energy.pmic_watts(energy.parse_pmic_read_adc(
        (FIXTURES / "rpi5_pmic_read_adc.txt").read_text()))
    assert reading.watts == pytest.approx(watts, rel=1e-6)
    assert reading.samples >= 5
    assert meter.notes["throttled_before"] == meter.notes["throttled_after"] == "0x50000"
    assert ["vcgencmd", "get_throttled"] in calls
    assert "not USB" in meter.describe()["limits"]


# --- Android battery ------------------------------------------------------------------------------


def _battery(root: Path, status: str, current: str, voltage: str = "3872000") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "status").write_text(status + "\n")
    (root / "current_now").write_text(current + "\n")
    (root / "voltage_now").write_text(voltage + "\n")
    return root


@pytest.mark.parametrize("current, unit, sign", [("-412000", "µA", "negative"),
                                                 ("412000", "µA", "positive"),
                                                 ("412", "mA", "positive")])
def test_android_battery_units_and_sign_conventions(tmp_path, current, unit, sign):
    meter = energy.AndroidBatteryMeter(_battery(tmp_path / "battery", "Discharging", current))
    assert meter.power_watts() == pytest.approx(0.412 * 3.872)
    assert meter.notes["current_unit"].startswith(unit) and sign in meter.notes["current_unit"]


def test_android_battery_refuses_a_charging_phone(tmp_path):
    root = _battery(tmp_path / "battery", "Charging", "-300000")
    with pytest.raises(energy.MeterUnavailable, match="unplug"):
        energy.AndroidBatteryMeter(root)


# --- macOS powermetrics ---------------------------------------------------------------------------


def test_powermetrics_cpu_power_lines_are_parsed():
    text = (FIXTURES / "powermetrics_cpu_power.txt").read_text()
    assert energy.parse_powermetrics(text) == [5.62, 5.48]  # not GPU, not "Combined"


def test_powermetrics_is_unavailable_off_macos():
    import sys

    if sys.platform == "darwin":
        pytest.skip("on macOS this depends on sudo")
    with pytest.raises(energy.MeterUnavailable, match="macOS"):
        energy.PowermetricsMeter()


# --- external CSV ---------------------------------------------------------------------------------


def test_csv_time_watts_and_time_volts_amps(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("time,watts\n100.0,2.0\n101.0,4.0\n102.0,4.0\n")
    b = tmp_path / "b.csv"
    b.write_text("time,volts,amps\n1970-01-01T00:01:40+00:00,5.0,0.4\n"
                 "1970-01-01T00:01:42+00:00,5.0,0.8\n")
    assert energy.integrate(energy.read_power_csv(a), 100.0, 102.0).joules == pytest.approx(7.0)
    assert energy.integrate(energy.read_power_csv(a), 100.5, 101.0).joules == pytest.approx(1.75)
    assert energy.integrate(energy.read_power_csv(b)).joules == pytest.approx(6.0)


def test_csv_that_does_not_cover_the_run_is_an_error(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("time,watts\n100.0,2.0\n101.0,2.0\n")
    with pytest.raises(energy.MeterUnavailable, match="cover"):
        energy.integrate(energy.read_power_csv(log), 100.0, 105.0)


def test_csv_with_a_wrong_header_is_refused(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("t,p\n1,2\n")
    with pytest.raises(energy.MeterUnavailable, match="header"):
        energy.CsvMeter(str(log))


def test_auto_lists_why_each_meter_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(energy.RaplMeter, "__init__", lambda self: (_ for _ in ()).throw(
        energy.MeterUnavailable("no RAPL domains in x")))
    monkeypatch.setattr(energy.shutil, "which", lambda name: None)
    with pytest.raises(energy.MeterUnavailable) as error:
        energy.open_meter("auto")
    for name in ("rapl", "rpi5-pmic", "android-battery", "powermetrics"):
        assert f"{name}:" in str(error.value)


# --- a whole bench with a meter ------------------------------------------------------------


class _Logger(threading.Thread):
    """Stands in for an external meter: appends ``time,watts`` rows at 50 Hz."""

    def __init__(self, path: Path, watts: float) -> None:
        super().__init__(daemon=True)
        self.path, self.watts, self.stop = path, watts, threading.Event()
        path.write_text("time,watts\n")

    def run(self) -> None:
        while not self.stop.wait(0.02):
            with open(self.path, "a") as f:
                f.write(f"{time.time():.4f},{self.watts}\n")


def test_bench_with_an_external_meter_subtracts_the_idle_baseline(demo_bundle, quick,
                                                                   tmp_path):
    log = tmp_path / "meter.csv"
    logger = _Logger(log, watts=3.0)
    logger.start()
    time.sleep(0.1)
    try:
        rep, out = harness.bench(quick(demo_bundle, baselines=["ort-fp32"], rounds=1,
                                       runs=20, energy=f"csv:{log}", idle_seconds=0.3))
    finally:
        logger.stop.set()
        logger.join()
    assert rep["energy_meter"]["status"] == "measured"
    for r in rep["results"]:
        e = r["energy"]
        assert e["idle_watts"] == pytest.approx(3.0) and e["run_watts"] == pytest.approx(3.0)
        assert abs(e["joules_per_inference"]) < 1e-6  # constant power: nothing added
        assert e["inferences"] == 20
    assert "idle baseline" in (out / "report.md").read_text()
    assert 'data-plot="energy"><img' in (out / "report.html").read_text()
