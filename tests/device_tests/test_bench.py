"""edgepet bench on this machine: contenders, rounds, reports, accuracy, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgepet.device_tests import baselines, harness, report, worker
from edgepet.runtime import BadInputError


def test_bench_times_edgepet_and_every_buildable_baseline(demo_bundle, quick):
    rep, out = harness.bench(quick(demo_bundle, threads=[1, 2]))
    names = {(r["contender"], r["n_threads"]) for r in rep["results"] if r["n_runs"]}
    for name in ("edgepet", "ort-fp32", "ort-nbits4", "ort-nbits2"):
        assert {(name, 1), (name, 2)} <= names
    for r in rep["results"]:
        assert r["n_runs"] == 4 and len(r["samples_ns"]) == 4 and r["n_rounds"] == 2
        assert r["p99_ns"] >= r["p90_ns"] >= r["median_ns"] > 0
        assert len(r["load_ns"]) == 2 and len(r["first_run_ns"]) == 2
        assert r["peak_rss_bytes"] > 0 and r["avg_ts"] > 0
    assert {c["baseline"] for c in rep["comparisons"]} == {"ort-fp32", "ort-nbits4",
                                                           "ort-nbits2"}
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "report.json").read_text())["schema"] == "edgepet.bench"
    # Huge-page memory per contender: AnonHugePages after the runs minus before the load,
    # where Linux reports it.
    linux = worker.huge_page_bytes() is not None
    for r in rep["results"]:
        assert (r["huge_pages_bytes"] is not None) == linux
        assert r["huge_pages_bytes"] is None or r["huge_pages_bytes"] >= 0
    assert "| in huge pages MB |" in (out / "report.md").read_text()


def test_a_decoder_bundle_gets_no_float_baseline_and_says_why(tmp_path):
    # A decoder's graph has edgepet's attention and SwiGLU ops besides LutMatMul: the float
    # baselines cannot be built from it (once an internal KeyError).
    node = onnx.helper.make_node("SwiGLU", ["x"], ["y"], domain="ai.edgepet")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "model.onnx"))

    class Decoder:
        model_path = tmp_path / "model.onnx"

        def op_library(self):
            return None

    built = baselines.build(["ort-fp32", "ort-nbits4"], Decoder(), tmp_path)
    assert [c.status for c in built] == ["unavailable", "unavailable"]
    assert all("SwiGLU" in c.reason and "benchmarks/llm.py" in c.reason for c in built)


def test_report_json_follows_the_shipped_schema(demo_bundle, quick):
    jsonschema = pytest.importorskip("jsonschema")
    rep, out = harness.bench(quick(demo_bundle, baselines=["ort-nbits4"]))
    schema = json.loads(report.SCHEMA_FILE.read_text())
    jsonschema.validate(json.loads((out / "report.json").read_text()), schema)
    for llama_bench_name in ("cpu_info", "test_time"):
        assert llama_bench_name in rep
    for name in ("n_threads", "avg_ts", "stddev_ts", "samples_ns"):
        assert name in rep["results"][0]


def test_every_contender_runs_in_a_process_of_its_own(demo_bundle, quick, monkeypatch):
    pids = []
    real = harness.run_worker

    def spy(spec, python):
        result = real(spec, python)
        pids.append(result["pid"])
        return result

    monkeypatch.setattr(harness, "run_worker", spy)
    harness.bench(quick(demo_bundle, baselines=["ort-fp32"]))
    assert len(pids) == 4 and len(set(pids)) == 4  # 2 contenders x 2 rounds


def test_contenders_are_interleaved_by_round(demo_bundle, quick, monkeypatch):
    order = []
    real = harness.run_worker
    monkeypatch.setattr(harness, "run_worker", lambda spec, python: (
        order.append(spec["contender"]), real(spec, python))[1])
    harness.bench(quick(demo_bundle, baselines=["ort-fp32"], rounds=3))
    assert order == ["edgepet", "ort-fp32", "ort-fp32", "edgepet", "edgepet", "ort-fp32"]


def test_float_graph_computes_what_the_codes_stand_for(demo_bundle):
    import onnxruntime as ort

    model = baselines.float_graph(demo_bundle)
    assert not any(n.domain == "ai.edgepet" for n in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, dequantized = demo_bundle.reference_outputs()
    got = session.run(None, demo_bundle.reference_inputs())[0]
    np.testing.assert_allclose(got, dequantized["output"], rtol=1e-5, atol=1e-5)


def test_nbits_baselines_are_ort_matmulnbits_at_accuracy_level_4_block_32(demo_bundle,
                                                                         tmp_path):
    built = baselines.build(["ort-nbits4", "ort-nbits2"], demo_bundle, tmp_path)
    for contender, bits in zip(built, (4, 2), strict=True):
        assert contender.status == "ok", contender.reason
        model = onnx.load(contender.model)
        nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        # One per LutMatMul: fused projections (Q/K/V, gate/up) share one node.
        assert len(nodes) == len({layer["node"] for layer in demo_bundle.layers})
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["bits"] == bits and attrs["block_size"] == 32
        assert attrs["accuracy_level"] == 4
        # codes + fp32 scales per block of 32 (+ zero points where ORT stores them)
        assert bits < contender.bits_per_weight < bits + 1.5


def test_accuracy_is_measured_for_every_adapter(adapter_bundle, quick):
    rep, _ = harness.bench(quick(adapter_bundle, baselines=["ort-fp32"], rounds=1))
    mine = next(r for r in rep["results"] if r["contender"] == "edgepet")
    assert [a["adapter"] for a in mine["accuracy"]] == ["a", "b"]
    for a in mine["accuracy"]:
        assert a["vs_pytorch"]["relative_error"] < 0.35 and a["vs_pytorch"]["cosine"] > 0.9
    base = next(r for r in rep["results"] if r["contender"] == "ort-fp32")
    assert [a["adapter"] for a in base["accuracy"]] == [None]


def test_litert_column_says_why_it_is_empty(demo_bundle, quick):
    rep, out = harness.bench(quick(demo_bundle, baselines=["litert"], rounds=1))
    litert = next(c for c in rep["contenders"] if c["name"] == "litert")
    assert litert["status"] == "unavailable" and litert["reason"]
    assert "litert" in (out / "report.md").read_text()
    assert any(u["what"] == "litert" for u in rep["unmeasured"])


def test_energy_is_unavailable_with_a_reason_where_no_meter_exists(demo_bundle, quick):
    from edgepet.device_tests import energy

    try:
        energy.open_meter("auto")
        pytest.skip("this machine has an energy meter")
    except energy.MeterUnavailable:
        pass
    rep, out = harness.bench(quick(demo_bundle, baselines=["none"], energy="auto",
                                   rounds=1))
    assert rep["energy_meter"]["status"] == "unavailable"
    assert "rapl" in rep["energy_meter"]["reason"]
    assert "unavailable" in (out / "report.md").read_text()
    assert all(r.get("energy") is None for r in rep["results"])


def test_ctrl_c_still_writes_what_was_measured(demo_bundle, quick, monkeypatch):
    calls = []
    real = harness.run_worker

    def interrupt_third(spec, python):
        calls.append(spec)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec, python)

    monkeypatch.setattr(harness, "run_worker", interrupt_third)
    rep, out = harness.bench(quick(demo_bundle, baselines=["ort-fp32"]))
    saved = json.loads((out / "report.json").read_text())
    assert saved["interrupted"] is True
    # two configurations measured, in round 1 (4 runs split over 2 rounds)
    assert sorted(r["n_runs"] for r in saved["results"]) == [2, 2]
    assert "interrupted" in (out / "report.md").read_text()


def test_a_failing_contender_is_recorded_and_the_rest_measured(demo_bundle, quick, tmp_path):
    pytest.importorskip("ai_edge_litert")
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    rep, _ = harness.bench(quick(demo_bundle, baselines=["litert"], tflite=str(broken)))
    litert = next(r for r in rep["results"] if r["contender"] == "litert")
    assert litert["n_runs"] == 0 and litert["error"]
    assert next(r for r in rep["results"] if r["contender"] == "edgepet")["n_runs"] == 4
    assert any("litert" in u["what"] for u in rep["unmeasured"])


def test_nothing_measured_is_bad_input_and_the_report_is_kept(demo_bundle, quick,
                                                               monkeypatch):
    def fail(spec, python):
        raise harness.WorkerFailed("exit code 1: no luck")

    monkeypatch.setattr(harness, "run_worker", fail)
    options = quick(demo_bundle, baselines=["none"])
    with pytest.raises(BadInputError, match="nothing could be measured"):
        harness.bench(options)
    saved = json.loads((harness.Path(options.output) / "report.json").read_text())
    assert saved["results"][0]["error"] == "exit code 1: no luck"


def test_latency_statistics():
    stats = report.latency_stats([4_000_000, 1_000_000, 2_000_000, 3_000_000, 5_000_000], 2)
    assert stats["median_ns"] == 3_000_000 and stats["min_ns"] == 1_000_000
    assert stats["p90_ns"] == pytest.approx(4_600_000)
    assert stats["avg_ns"] == 3_000_000
    assert stats["avg_ts"] == pytest.approx(np.mean([2e9 / x for x in
                                                     (1e6, 2e6, 3e6, 4e6, 5e6)]))


def test_top1_agreement_only_where_the_bundle_says_the_output_is_logits():
    from edgepet.device_tests.worker import compare

    rng = np.random.default_rng(0)
    y = [rng.standard_normal((20, 8)).astype(np.float32)]
    ref = [y[0] + 0.01]
    names = ["out"]
    embedding = {"kind": "embedding", "output": "out"}
    logits = {"kind": "logits", "output": "out"}
    assert compare(y, ref, embedding, names)["top1_agreement"] is None
    assert compare(y, ref, logits, names)["top1_agreement"] == 1.0
    assert compare([y[0][:4]], [ref[0][:4]], logits, names)["top1_agreement"] is None  # < 16
    assert compare(y, ref)["top1_agreement"] == 1.0  # a bundle without reference.metrics


@pytest.mark.parametrize("codes,words", [({"symmetric": True}, ", symmetric"),
                                         ({"symmetric": False}, ", asymmetric"),
                                         ({"symmetric": True, "zero_level": True},
                                          ", zero-level symmetric")])
def test_the_edgepet_contender_says_how_its_codes_are_stored(codes, words):
    from types import SimpleNamespace

    layer = {"N": 32, "K": 64, "stored_bytes": 1088}
    bundle = SimpleNamespace(
        path="b", layers=[layer], adapters=[], target={},
        manifest={"quantization": {"bits": 4, "group_size": 32, **codes},
                  "files": {"model.onnx": {"bytes": 2000}}})
    contender = baselines.edgepet_contender(bundle, None)
    assert contender.description == f"edgepet LutMatMul, 4-bit, group 32{words}"
    assert contender.bits_per_weight == 8 * 1088 / (32 * 64)
