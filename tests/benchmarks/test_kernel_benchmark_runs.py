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
    contenders = {r["contender"] for r in data["results"]}
    assert {"ort-nbits", "ort-nbits-lut", "ort-fp32"} < contenders
    assert any(c.startswith("edgepet-") for c in contenders)
    assert {r["bits"] for r in data["ratios"]} == {"1", "2", "3", "4", "ternary"}
    # ORT's MatMulNBits model is built to match its own dequantization exactly.
    ours = [r["rel_err"] for r in data["results"] if r["contender"].startswith("edgepet")]
    theirs = [r["rel_err"] for r in data["results"] if r["contender"].startswith("ort")]
    assert max(theirs) < 1e-5 and max(ours) < 0.015
    assert "speedup" in capsys.readouterr().out
