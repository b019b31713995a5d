"""Mixed precision by measurement, and embedding tables stored as 4/8-bit codes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepet
from edgepet.exporters.rewrite import LayerOption, plan_layers, quantize_embeddings

G64, G32, FLOAT = LayerOption(4, 64, True), LayerOption(4, 32, False), LayerOption(None, None,
                                                                                  True)


def test_a_budget_upgrades_the_most_sensitive_layers_first():
    shapes = {"q": (64, 64), "v": (64, 64), "ffn": (256, 64)}
    errors = {"q": {G64: 0.001, G32: 0.0005, FLOAT: 0.0},
              "v": {G64: 0.02, G32: 0.004, FLOAT: 0.0},
              "ffn": {G64: 0.002, G32: 0.001, FLOAT: 0.0}}
    plan = plan_layers(shapes, errors, [G64, G32, FLOAT], budget_error=0.01)
    assert plan == {"q": G64, "v": G32, "ffn": G64}
    tight = plan_layers(shapes, errors, [G64, G32, FLOAT], budget_error=0.0001)
    assert tight["v"] == FLOAT and sum(errors[k][o] for k, o in tight.items()) <= 0.0001


def test_a_size_bound_lowers_the_least_sensitive_layers_first():
    options = [LayerOption(2, 64, False), LayerOption(3, 64, False), LayerOption(4, 64, False)]
    shapes = {"a": (256, 256), "b": (256, 256)}
    errors = {"a": dict(zip(options, (0.3, 0.05, 0.01), strict=True)),
              "b": dict(zip(options, (0.02, 0.005, 0.001), strict=True))}
    full = sum(options[2].stored_bytes(*s) for s in shapes.values())
    plan = plan_layers(shapes, errors, options, max_bytes=full - 1)
    assert plan["a"] == options[2] and plan["b"] != options[2]
    assert sum(plan[k].stored_bytes(*shapes[k]) for k in shapes) < full
    with pytest.raises(ValueError, match="no plan fits"):
        plan_layers(shapes, errors, options, max_bytes=100)


def _gather_model(table: np.ndarray, tied: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if tied:  # a head that reads the same table
        nodes.append(helper.make_node("MatMul", ["y", "table_t"], ["logits"]))
        nodes.insert(0, helper.make_node("Transpose", ["table"], ["table_t"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "ids", TensorProto.INT64, ["b", "s"])], outputs, [numpy_helper.from_array(table,
                                                                                 "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_tables_become_gather_block_quantized_in_onnxruntime(bits):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((3000, 96)).astype(np.float32)
    model = _gather_model(table)
    records = quantize_embeddings(model, bits, 32)
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"]
    assert records[0].stored_bytes * (3 if bits == 8 else 5) < records[0].float_bytes
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    ids = np.array([[0, 7, 2999], [5, 5, 1]])
    y = session.run(None, {"ids": ids})[0]
    step = (table.max() - table.min()) / (2 ** bits - 1)
    assert y.shape == (2, 3, 96) and np.abs(y - table[ids]).max() <= step


def test_a_table_another_node_reads_stays_float():
    table = np.random.default_rng(0).standard_normal((3000, 96)).astype(np.float32)
    model = _gather_model(table, tied=True)
    assert quantize_embeddings(model, 4, 32) == []
    assert [n.op_type for n in model.graph.node] == ["Transpose", "Gather", "MatMul"]


def _export_planned(cli, folder, out, *flags):
    """``edgepet export`` of a sentence-embedding model with plan ``flags``."""
    return cli("export", folder, "--task", "sentence-embedding", *flags, "-o", out)


def test_budget_error_plans_a_text_model_and_the_manifest_keeps_the_plan(bert_folder, tmp_path,
                                                                        cli):
    out = tmp_path / "planned"
    code, out_text, err = _export_planned(cli, bert_folder, out, "--budget-error", "0.0005")
    assert code == 0, err
    assert "plan:" in err and "most sensitive" in err
    plan = edgepet.runtime.bundle.Bundle.open(out).manifest["quantization"]["plan"]
    assert plan["budget_error"] == 0.0005 and plan["metric"] == "embedding"
    assert len(plan["layers"]) == 13  # 2 x (q, k, v, attn out, ffn in, ffn out) + pooler
    assert all("sensitivity" in layer for layer in plan["layers"].values())
    assert "plan" in out_text


def test_max_size_bounds_the_exported_weights_and_mixes_bit_widths(bert_folder, tmp_path,
                                                                   cli):
    out = tmp_path / "sized"
    code, _, err = _export_planned(cli, bert_folder, out, "--max-size", "70kB")
    assert code == 0, err
    manifest = edgepet.runtime.bundle.Bundle.open(out).manifest
    plan = manifest["quantization"]["plan"]
    assert plan["max_size_bytes"] == 70_000
    assert manifest["sizes"]["weight_bytes"] <= 70_000
    assert len({layer["bits"] for layer in plan["layers"].values()}) >= 2  # a real mix
    assert manifest["reference"]["measured"]["default"]["ok"]


def test_a_max_size_below_the_smallest_plan_is_refused_and_nothing_is_written(
        bert_folder, tmp_path, cli):
    for size, says in (("10kB", "outside its linear layers"), ("45kB", "cannot be met")):
        out = tmp_path / f"too-small-{size}"
        code, _, err = _export_planned(cli, bert_folder, out, "--max-size", size)
        assert code == 2 and says in err and "raise" in err, err
        assert not out.exists()
