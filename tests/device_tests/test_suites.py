"""--suite: floors relative to a baseline of the same run; exit 1 with the reasons."""

from __future__ import annotations

import json

import pytest

from edgepet.device_tests import suites


def _suite(tmp_path, min_speedup, arch="x86_64"):
    path = tmp_path / f"suite-{min_speedup}.toml"
    path.write_text(f"""
[suite]
name = "here"
arch = "{arch}"
[throughput]
baseline = "ort-nbits4"
min_speedup = {min_speedup}
[accuracy]
max_relative_error_vs_pytorch = "manifest"
max_relative_error_vs_dequantized = 0.05
min_cosine = 0.9
[energy]
baseline = "ort-nbits4"
max_ratio = 1.0
required = false
[memory]
baseline = "ort-nbits4"
max_ratio = 2.0
""")
    return path


def _bench(cli, bundle, out, *extra):
    return cli("bench", bundle.path, "--runs", "4", "--rounds", "2", "--warmup", "1",
               "--delay", "0", "--threads", "1", "--energy", "none", "--baselines",
               "ort-nbits4", "-o", out, *extra)


def test_shipped_suites_are_for_arm_devices_with_a_floor_against_ort_4bit():
    assert suites.names() == ["android", "apple", "rpi5"]
    for name in suites.names():
        suite = suites.load(name)
        assert suite["suite"]["arch"] == "aarch64"
        assert suite["throughput"]["baseline"] == "ort-nbits4"
        assert suite["throughput"]["min_speedup"] >= 1.0
        assert suite["accuracy"]["max_relative_error_vs_pytorch"] == "manifest"


def test_a_met_suite_exits_0_and_is_in_the_report(cli, demo_bundle, tmp_path):
    code, out, err = _bench(cli, demo_bundle, tmp_path / "r", "--suite",
                            _suite(tmp_path, 0.01))
    assert code == 0, err
    saved = json.loads((tmp_path / "r/report.json").read_text())
    assert saved["suite"]["passed"]
    statuses = {c["what"]: c["status"] for c in saved["suite"]["checks"]}
    assert statuses["throughput vs ort-nbits4 at 1 threads"] == "PASS"
    assert statuses["energy"] == "SKIP"  # no meter here: skipped, not failed
    assert "Suite here: passed" in (tmp_path / "r/report.md").read_text()


def test_a_missed_floor_exits_1_with_the_reason(cli, demo_bundle, tmp_path):
    code, out, err = _bench(cli, demo_bundle, tmp_path / "r", "--suite",
                            _suite(tmp_path, 1000))
    assert code == 1
    assert "FAIL throughput vs ort-nbits4 at 1 threads" in err and "floor 1000.00x" in err


def test_a_suite_for_another_device_fails_on_this_one(cli, demo_bundle, tmp_path):
    code, _, err = _bench(cli, demo_bundle, tmp_path / "r", "--suite", "rpi5")
    assert code == 1 and "the suite is for aarch64" in err


def test_a_missing_baseline_is_a_failed_check_not_a_pass(cli, demo_bundle, tmp_path):
    code, _, err = cli("bench", demo_bundle.path, "--runs", "2", "--rounds", "1", "--delay",
                       "0", "--threads", "1", "--energy", "none", "--baselines", "none",
                       "-o", tmp_path / "r", "--suite", _suite(tmp_path, 0.01))
    assert code == 1 and "ort-nbits4 was not measured" in err


@pytest.mark.parametrize("name", ["nosuch", "missing.toml"])
def test_unknown_suite_is_bad_input(cli, demo_bundle, tmp_path, name):
    code, _, err = cli("bench", demo_bundle.path, "--suite", name, "-o", tmp_path / "r")
    assert code == 2 and "android, apple, rpi5" in err
