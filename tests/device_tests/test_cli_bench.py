"""`edgepet bench` from the command line: help, bad input (exit 2), --compare."""

from __future__ import annotations

import json
import shutil

import pytest


def test_help_names_every_option(cli, capsys):
    with pytest.raises(SystemExit):
        cli("bench", "--help")
    text = capsys.readouterr().out
    for flag in ("--device", "--threads", "--runs", "--seconds", "--warmup", "--baselines",
                 "--energy", "--suite", "--adapter", "--compare", "--delay", "ssh://", "adb"):
        assert flag in text, flag


@pytest.mark.parametrize("args, expected", [
    (["--threads", "0"], "at least 1"),
    (["--threads", "a,b"], "comma-separated"),
    (["--baselines", "ort-fp16"], "unknown ort-fp16"),
    (["--runs", "0"], "--runs"),
    (["--energy", "thermometer"], "--energy 'thermometer'"),
    (["--device", "telnet://pi"], "--device 'telnet://pi'"),
])
def test_bad_flags_exit_2(cli, demo_bundle, tmp_path, args, expected):
    code, _, err = cli("bench", demo_bundle.path, "--baselines", "none", "--runs", "1",
                       "-o", tmp_path / "r", *args)
    assert code == 2 and expected in err, err


def test_missing_bundle_exits_2(cli, tmp_path):
    code, _, err = cli("bench", tmp_path / "nothing")
    assert code == 2 and "not a bundle folder" in err


def test_bundle_for_another_op_abi_exits_2(cli, demo_bundle, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(demo_bundle.path, copy, ignore=shutil.ignore_patterns("reports"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["operator"]["abi_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("bench", copy)
    assert code == 2 and "ABI 99" in err and "export the model again" in err


def test_compare_puts_two_reports_side_by_side(cli, demo_bundle, tmp_path):
    for name in ("before", "after"):
        code, _, err = cli("bench", demo_bundle.path, "--runs", "2", "--rounds", "1",
                           "--delay", "0", "--threads", "1", "--energy", "none",
                           "--baselines", "ort-fp32", "-o", tmp_path / name)
        assert code == 0, err
    code, out, _ = cli("bench", "--compare", tmp_path / "before/report.json",
                       tmp_path / "after/report.json", "-o", tmp_path / "cmp")
    assert code == 0
    assert "before median ms" in out and "after/before time" in out
    assert out.count("| edgepet | 1 |") == 1 and out.count("| ort-fp32 | 1 |") == 1
    assert (tmp_path / "cmp/compare.md").read_text() == out
    assert "<table>" in (tmp_path / "cmp/compare.html").read_text()


def test_compare_refuses_what_is_not_a_report(cli, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    code, _, err = cli("bench", "--compare", tmp_path / "x.json", tmp_path / "x.json")
    assert code == 2 and "not an edgepet bench report" in err


def test_a_real_ctrl_c_writes_the_partial_report(demo_bundle, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "r"
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from edgepet.cli import main; sys.exit(main())",
         "bench", str(demo_bundle.path), "--seconds", "60", "--delay", "0", "--threads", "1",
         "--energy", "none", "--baselines", "none", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A suite started in the background (`pytest &`) inherits SIGINT ignored, and so
        # would the bench: give it the default disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    line = ""
    while "round 2/3" not in line and time.time() < deadline:  # round 1 measured
        line = process.stderr.readline()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err  # the shell's code for SIGINT
    saved = json.loads((out / "report.json").read_text())
    assert saved["interrupted"] is True
    assert saved["results"][0]["n_runs"] > 0 and saved["results"][0]["n_rounds"] == 1
