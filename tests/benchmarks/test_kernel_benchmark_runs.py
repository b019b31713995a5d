"""The kernel benchmark still runs end to end (tiny shapes); it asserts no speed."""

import importlib.util
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


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("kernel_benchmark",
                                                  ROOT / "benchmarks" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_stack_times_the_product_winners_and_both_plain_blocks_once_each():
    bench = _benchmark_module()
    peers = {("2", 1): (128, True, "default"), ("2", 2): (64, False, "default"),
             ("4", 1): (128, True, "lut")}
    assert bench.stack_candidates(2, [1, 2], peers) == [
        (128, True, "default"), (64, False, "default"), (128, False, "default")]
    assert bench.stack_candidates(4, [1, 2], peers) == [
        (128, True, "lut"), (64, False, "default"), (128, False, "default")]
    assert bench.stack_candidates(2, [1, 2], {}) == [(64, False, "default"),
                                                     (128, False, "default")]


def test_stack_ratios_are_against_the_fastest_ort_configuration(capsys):
    bench = _benchmark_module()

    def row(name, ms, peer=False):
        return {"bits": 2, "threads": 1, "contender": name, "peer": peer, "layers": 1,
                "weight_bytes": 1e6, "bits_per_weight": 2.25, "ms_per_token": ms,
                "tokens_per_s": 1e3 / ms, "gb_per_s": 1.0 / ms}

    stack = [row("edgepet-auto", 2.0), row("ort-nbits b64/default", 4.0),
             row("ort-nbits b128/default", 3.0, peer=True)]
    bench.print_tables({"model": "cpu", "cores": 1, "isa": [], "load": (0.0, 0.0, 0.0)},
                       [], [], {1: 10.0}, stack, False)
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.split()[:2] == ["2", "1"]]
    assert len(rows) == 3
    assert "edgepet-auto" in rows[0] and rows[0].endswith("1.50x")
    assert "b64/default" in rows[1] and "*" not in rows[1] and rows[1].endswith("0.75x")
    assert "b128/default *" in rows[2] and rows[2].endswith("1.00x")


def test_smoke_run_with_zero_level_codes(tmp_path, monkeypatch, capsys):
    """--zero-level: edgepet's 2-4 bit contenders on ORT's symmetric grid. Their
    quantization error (their product against fp32) is the zero-level grid's: another one
    at 4 bits, clearly lower at 2 (0.39 against 0.50 of the weights on Gaussian data), the
    same at 1 bit (no zero level there)."""
    def smoke(*extra):
        out = tmp_path / f"bench{len(extra)}.json"
        monkeypatch.setattr(sys, "argv", ["kernels.py", "--smoke", "--threads", "1", "--bits",
                                          "1,2,4", *extra, "--json", str(out)])
        try:
            runpy.run_path(str(ROOT / "benchmarks" / "kernels.py"), run_name="__main__")
        except SystemExit as stop:
            assert stop.code == 0
        data = json.loads(out.read_text())
        ours = [r for r in data["results"] if r["contender"] == "edgepet-reference"
                or r["contender"] == "edgepet-auto"]
        assert max(r["rel_err"] for r in ours) < 0.015
        return data, {(r["bits"], r["m"]): r["quant_err"] for r in ours}

    odd_data, odd = smoke()
    zero_data, zero = smoke("--zero-level")
    assert zero_data["zero_level"] is True and odd_data["zero_level"] is False
    assert "2-4 bits zero-level" in capsys.readouterr().out
    for (bits, m), err in zero.items():
        if bits == "1":
            assert err == odd[(bits, m)]
        elif bits == "2":
            assert err < 0.9 * odd[(bits, m)], (bits, m)
        else:
            assert err != odd[(bits, m)], (bits, m)
