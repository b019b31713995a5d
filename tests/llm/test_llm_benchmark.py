"""benchmarks/llm.py runs end to end on the tiny model (the figures come from real runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "llm.py"


def test_quality_table_runs_on_a_tiny_gguf(tiny_gguf, tiny_2bit_bundle):
    out = subprocess.run(
        [sys.executable, str(BENCH), "quality", "--gguf", str(tiny_gguf), "--max-tokens", "40",
         "--ctx", "16",
         "--config", "fp32|-|-|-|-|{}", "--config", '4-bit|4|32|asym|rtn|{"lm_head": 3}',
         "--config", "zero-level|3|32|zero|rtn|{}",
         "--bundle", str(tiny_2bit_bundle), "--json"],
        capture_output=True, text=True, check=True, timeout=300)
    rows = json.loads(out.stdout)["rows"]
    assert [r["config"] for r in rows[:3]] == ["fp32", "4-bit", "zero-level"]
    assert rows[3]["run"] == "bundle"
    assert all(r["perplexity"] > 1 and r["tokens"] == 40 - 3 for r in rows)


def test_speed_runs_for_a_bundle(tiny_2bit_bundle):
    out = subprocess.run(
        [sys.executable, str(BENCH), "speed", "--bundle", str(tiny_2bit_bundle),
         "--threads-list", "1", "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1",
         "--json"], capture_output=True, text=True, check=True, timeout=300)
    (row,) = json.loads(out.stdout)["rows"]
    assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["threads"] == 1


def test_profile_splits_decode_time_by_op(tiny_2bit_bundle):
    out = subprocess.run(
        [sys.executable, str(BENCH), "profile", "--bundle", str(tiny_2bit_bundle), "--steps",
         "3", "--json"], capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout)
    ops = {r["op"] for r in result["rows"]}
    assert {"LutMatMul", "LutMatMul (lm_head)", "GroupQueryRotaryAttention", "SwiGLU",
            "SkipSimplifiedLayerNormalization"} <= ops
    assert {"LutMatMul (body)", "LutMatMul (head)", "attention", "everything else",
            "between nodes (ORT)"} == set(result["groups_ms_per_token"])
    assert sum(r["share_of_nodes"] for r in result["rows"]) == pytest.approx(1, abs=0.01)


def test_synthetic_speed_decodes_with_the_cache_in_place(tmp_path, tiny_ck):
    """The 1B-shape benchmark's loop, on the tiny model: it binds the graph's own cache
    buffers (float16, written in place at past_length) and decodes."""
    import importlib.util

    import numpy as np
    import onnx

    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.quant import quantize

    spec = importlib.util.spec_from_file_location("llm_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    weights = {name: quantize(w, 4, 32) for name, w in llm_graph.float_weights(tiny_ck).items()}
    onnx.save_model(llm_graph.build_decoder(tiny_ck, weights, 64, np.float16),
                    str(tmp_path / "model.onnx"))
    result = bench.synthetic_speed(tmp_path, tiny_ck.config, threads=1, prompt_tokens=6,
                                   new_tokens=5, runs=1)
    assert result["prefill_tok_s"] > 0 and result["decode_tok_s"] > 0
