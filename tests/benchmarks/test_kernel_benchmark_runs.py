"""The kernel benchmark still runs end to end (tiny shapes); it asserts no speed."""

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_every_contender_and_ratio(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["kernels.py", "--smoke", "--threads", "1",
                                      "--json", str(out)])
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "kernels.py"), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0
    data = json.loads(out.read_text())
    results = data["results"]
    contenders = {r["contender"] for r in results}
    assert {"ort-nbits", "ort-quantizer", "ort-fp32"} < contenders
    assert any(c.startswith("edgepet-") for c in contenders)
    configs = {r["config"] for r in results if r["contender"] == "ort-nbits"}
    assert {f"b{b}{z}/{p}" for b in (32, 64, 128) for z in ("", "/zp")
            for p in ("default", "lut")} == configs
    assert {r["bits"] for r in data["ratios"]} == {"1", "2", "3", "4", "ternary"}
    # Every ORT model is read back with ORT's own dequantization rule: valid, and
    # accuracy_level=4's int8 activations keep it within about 1 % of that product.
    theirs = [r for r in results if r["contender"].startswith("ort-nbits")]
    assert all(r["valid"] for r in theirs) and max(r["rel_err"] for r in theirs) < 0.02
    ours = [r for r in results if r["contender"].startswith("edgepet")]
    assert max(r["rel_err"] for r in ours) < 0.015
    # 2-bit codes + one fp16 scale per 64 weights (K=256, N=96: no layout padding).
    assert {r["bits_per_weight"] for r in ours if r["bits"] == "2"} == {2.25}
    out_text = capsys.readouterr().out
    assert "speedup" in out_text and "CPU:" in out_text


def test_bits_option_times_only_those_widths_and_their_ort_peers(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["kernels.py", "--smoke", "--threads", "1",
                                      "--bits", "1,ternary", "--json", str(out)])
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "kernels.py"), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0
    data = json.loads(out.read_text())
    assert {r["bits"] for r in data["ratios"]} == {"1", "ternary"}
    assert {r["ort_bits"] for r in data["ratios"]} == {"2"}
    assert {r["bits"] for r in data["results"] if r["contender"].startswith("ort-n")} == {"2"}


def test_an_unknown_shape_is_a_usage_error_that_names_the_choices(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kernels.py", "--shapes", "4096x4096,smol_576"])
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "kernels.py"), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("an unknown shape must stop the benchmark")
    err = capsys.readouterr().err
    assert "['smol_576'] unknown" in err and "smollm2 576->576" in err
