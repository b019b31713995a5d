"""``--max-size`` for decoders: a width per projection under a size bound, from a measured
sensitivity; the bound holds, the plan is recorded, impossible bounds and --budget-error
are refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepet.cli import main
from edgepet.exporters.llm import calibrate, export_decoder
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm import plan as llm_plan
from edgepet.exporters.llm.export import _tokenizer
from edgepet.quant import quantize
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.generate import open_decoder

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def sizes(tmp_path_factory, tiny_gguf):
    """Weight bytes of the tiny model with every projection at 2 and at 4 bits."""
    root = tmp_path_factory.mktemp("sizes")
    out = {}
    for bits in (2, 4):
        bundle = export_decoder(tiny_gguf, root / f"b{bits}", bits=bits, layer_bits={},
                                quantizer="rtn")
        out[bits] = bundle.manifest["sizes"]["weight_bytes"]
    return out


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_gguf, sizes):
    bound = (sizes[2] + sizes[4]) // 2
    out = tmp_path_factory.mktemp("planned") / "b"
    return bound, export_decoder(tiny_gguf, out, max_size=bound, calibration_tokens=256)


def test_a_planned_bundle_fits_the_bound_and_records_the_plan(planned, sizes):
    bound, bundle = planned
    m = bundle.manifest
    assert sizes[2] < bound < sizes[4]
    assert m["sizes"]["weight_bytes"] <= bound
    plan = m["quantization"]["plan"]
    assert plan["max_size_bytes"] == bound and plan["metric"] == "residual-energy"
    assert plan["weight_bytes"] == m["sizes"]["weight_bytes"]  # the plan counts exactly
    layers = {r["name"]: r for r in m["layers"]}
    assert set(plan["layers"]) == set(layers)
    for name, choice in plan["layers"].items():
        assert layers[name]["bits"] == choice["bits"]
        assert set(choice["sensitivity"]) == {"2-bit", "3-bit", "4-bit"}
    widths = {choice["bits"] for choice in plan["layers"].values()}
    assert min(widths) < 4  # it had to go down
    # the first planned width is calibrated (auto: gptq below 4 bits)
    assert m["quantization"]["quantizer"] == "gptq"
    assert all(r.ok for r in open_decoder(bundle.path).bundle.verify())


def test_the_plan_spends_what_the_bound_allows(planned, sizes):
    """No projection the plan left narrow would still fit one width wider."""
    bound, bundle = planned
    plan = bundle.manifest["quantization"]["plan"]
    left = bound - plan["weight_bytes"]
    steps = {2: 3, 3: 4}
    ck_costs = {}
    for name, choice in plan["layers"].items():
        if choice["bits"] in steps:
            ck_costs[name] = choice
    assert ck_costs
    # the widening costs of the same shape: recomputed from the graph's tensors
    from edgepet.exporters.llm.checkpoint import load_checkpoint

    ck = load_checkpoint(bundle.manifest["provenance"]["source"])
    costs = llm_plan.projection_costs(ck, list(ck_costs), (2, 3, 4), 32, False)
    for name, choice in ck_costs.items():
        wider = steps[choice["bits"]]
        extra = costs[name][wider] - costs[name][choice["bits"]]
        gain = choice["sensitivity"][f"{choice['bits']}-bit"] \
            - choice["sensitivity"][f"{wider}-bit"]
        assert extra > left or gain <= 0, name


def test_a_bound_the_4_bit_weights_fit_plans_nothing_and_rounds(tmp_path, tiny_gguf, sizes):
    bundle = export_decoder(tiny_gguf, tmp_path / "b", max_size=sizes[4])
    m = bundle.manifest
    assert {r["bits"] for r in m["layers"]} == {4}
    assert m["quantization"]["quantizer"] == "rtn"
    assert m["quantization"]["plan"]["tokens"] == 0
    assert m["sizes"]["weight_bytes"] == sizes[4]


def test_choose_gives_the_bytes_to_the_projection_whose_error_is_largest():
    costs = {"a": {2: 10, 3: 15, 4: 20}, "b": {2: 10, 3: 15, 4: 20}}
    errors = {"a": {2: 0.5, 3: 0.1, 4: 0.0}, "b": {2: 0.05, 3: 0.01, 4: 0.0}}
    assert llm_plan.choose(errors, costs, (2, 3, 4), 40) == {"a": 4, "b": 4}
    assert llm_plan.choose(errors, costs, (2, 3, 4), 30) == {"a": 4, "b": 2}
    assert llm_plan.choose(errors, costs, (2, 3, 4), 25) == {"a": 3, "b": 2}
    assert llm_plan.choose(errors, costs, (2, 3, 4), 20) == {"a": 2, "b": 2}
    with pytest.raises(ValueError):
        llm_plan.choose(errors, costs, (2, 3, 4), 19)


def test_sensitivities_fall_with_width_and_measure_the_residual_stream(tiny_ck):
    data = calibrate.calibration_windows(_tokenizer(tiny_ck), None, 512)
    names = [p.name for p in llm_graph.projections(tiny_ck.config)]
    errors = llm_plan.sensitivities(tiny_ck, data.windows, names, (2, 3, 4), 32, False)
    assert set(errors) == set(names)
    for name, e in errors.items():
        assert e[2] > e[3] > e[4] >= 0, name
    # attn.o of layer 0, by hand: its error per token over the stream right after it
    inputs, streams = {}, {}

    def float_weight(name, x):
        inputs[name] = x
        return next(p for p in llm_graph.projections(tiny_ck.config)
                    if p.name == name).weight(tiny_ck)

    calibrate.forward(tiny_ck, data.windows, float_weight,
                      residual=lambda block, x: streams.setdefault(block, x))
    w = tiny_ck.weights["model.layers.0.self_attn.o_proj.weight"]
    delta = inputs["layers.0.attn.o"] @ (w - quantize(w, 2, 32, False).dequantize()).T
    by_token = (delta ** 2).sum(-1) / (streams["layers.0.attn"] ** 2).sum(-1)
    assert errors["layers.0.attn.o"][2] == pytest.approx(by_token.mean(), rel=1e-4)


def test_an_impossible_bound_exits_2_names_the_smallest_size_and_writes_nothing(
        tmp_path, tiny_gguf, sizes, capsys):
    out = tmp_path / "b"
    assert main(["export", str(tiny_gguf), "--max-size", str(sizes[2] - 1), "-o", str(out),
                 "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "cannot be met" in message and f"{sizes[2]} bytes" in message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_the_cli_plans_under_max_size(tmp_path, tiny_gguf, sizes, capsys):
    bound = sizes[4] - 4000
    out = tmp_path / "b"
    assert main(["export", str(tiny_gguf), "--max-size", f"{bound / 1000}kB",
                 "--calibration-tokens", "256", "-o", str(out)]) == 0
    text = "".join(capsys.readouterr())
    assert "planning widths under" in text and "plan:" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sizes"]["weight_bytes"] <= bound


@pytest.mark.parametrize("argv, expected", [
    (["--budget-error", "0.01"], "--budget-error does not plan decoders"),
    (["--max-size", "50kB", "--bits", "ternary"], "--bits ternary is not one of them"),
    (["--max-size", "0"], "must be a positive size"),
])
def test_plan_options_decoders_cannot_take_exit_2(tmp_path, tiny_gguf, capsys, argv,
                                                  expected):
    out = tmp_path / "b"
    assert main(["export", str(tiny_gguf), *argv, "-o", str(out), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_max_size_and_layer_bits_are_refused_together(tmp_path, tiny_gguf):
    with pytest.raises(BadInputError, match="layer_bits or max_size"):
        export_decoder(tiny_gguf, tmp_path / "b", max_size=60_000, layer_bits={"lm_head": 4})
    assert not (tmp_path / "b").exists()


def test_kept_projections_stay_float_and_count_outside_the_plan(tmp_path, tiny_gguf, tiny_ck,
                                                               sizes):
    c = tiny_ck.config
    head = llm_plan.projection_costs(tiny_ck, ["lm_head"], (4,), 32, False)["lm_head"][4]
    bound = sizes[4] - head + c.vocab_size * c.hidden_size * 4 - 2000  # 4-bit, float head
    bundle = export_decoder(tiny_gguf, tmp_path / "b", max_size=bound, keep=["lm_head"],
                            calibration_tokens=256)
    m = bundle.manifest
    assert "lm_head" not in m["quantization"]["plan"]["layers"]
    assert next(r for r in m["layers"] if r["name"] == "lm_head")["bits"] is None
    assert m["sizes"]["weight_bytes"] <= bound
    assert np.isfinite(m["quantization"]["plan"]["estimated_error"])


def test_a_plan_serves_several_adapters_with_the_same_widths(tmp_path, tiny_hf, tiny_ck,
                                                             sizes):
    from test_decoder_adapter import _lora_parts, _peft_folder

    folders = {t: _peft_folder(tmp_path / t, _lora_parts(tiny_ck, seed=seed))
               for t, seed in (("a", 1), ("b", 2))}
    bound = (sizes[2] + sizes[4]) // 2
    bundle = export_decoder(tiny_hf, tmp_path / "ab", max_size=bound, adapters=folders,
                            quantizer="rtn")
    m = bundle.manifest
    assert m["sizes"]["weight_bytes"] <= bound  # adapter files are not the graph's weights
    plan = m["quantization"]["plan"]["layers"]
    assert all(r["bits"] == plan[r["name"]]["bits"] for r in m["layers"])
    assert [a["name"] for a in m["adapters"]] == ["a", "b"]
    assert all(r["ok"] for r in m["reference"]["measured"].values())


def test_a_shared_head_is_not_planned_and_its_table_counts_outside(tmp_path, tiny_gguf):
    bundle = export_decoder(tiny_gguf, tmp_path / "b", tied_head="shared", max_size=60_000,
                            calibration_tokens=256)
    m = bundle.manifest
    assert "lm_head" not in m["quantization"]["plan"]["layers"]
    assert m["decoder"]["head"]["storage"] == "shared"
    assert m["sizes"]["weight_bytes"] == m["quantization"]["plan"]["weight_bytes"] <= 60_000
