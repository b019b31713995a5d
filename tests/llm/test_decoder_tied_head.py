"""The tied output head stored once: with ``tied_head="shared"`` the head is a MatMulNBits
reading the embedding table's 4-bit GatherBlockQuantized codes, so the bundle loses the
head's own codes and computes what the table's rows stand for, up to int8 activations."""

import dataclasses

import numpy as np
import onnx
import pytest
from llm_helpers import TINY, tiny_checkpoint, write_hf_folder
from onnx import helper, numpy_helper

from edgepet.cli import main
from edgepet.exporters.llm import export_decoder
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.graph import dequantize_table, shared_head_tensors
from edgepet.runtime import InferenceSession
from edgepet.runtime.errors import BadInputError

IDS = [1, 40, 41, 42, 7, 299, 13, 14, 15, 99, 3, 120, 121]


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_hf):
    root = tmp_path_factory.mktemp("heads")
    return {head: export_decoder(tiny_hf, root / head, bits=4, tied_head=head)
            for head in ("shared", "separate")}


def _head_inputs_and_table(bundle):
    """The shared-head graph with the head's input (the last hidden states) as an output
    and a float twin of the head beside it: (model, dequantized table)."""
    model = onnx.load(str(bundle.path / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    table = dequantize_table(*(inits[n] for n in shared_head_tensors()))
    head = next(n for n in model.graph.node if n.name == "lm_head")
    assert head.op_type == "MatMulNBits" and head.domain == "com.microsoft"
    model.graph.initializer.append(numpy_helper.from_array(
        np.ascontiguousarray(table.T), "float_head"))
    model.graph.node.append(helper.make_node("MatMul", [head.input[0], "float_head"],
                                             ["float_logits"]))
    model.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                               for n in (head.input[0], "float_logits")])
    return model, table


def test_the_shared_head_computes_the_table_rows_within_int8_activation_rounding(heads):
    model, table = _head_inputs_and_table(heads["shared"])
    session = InferenceSession(model, threads=1)
    c = TINY
    feeds = llm_graph.prefill_feeds(c, IDS)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds), strict=True))
    x, got, exact = out[names[-2]][0], out["logits"][0], out["float_logits"][0]
    # accuracy_level=4 rounds each block of 32 activations to int8 (scale max|x| / 127):
    # each product moves by at most |w| * scale / 2
    blocks = x.reshape(len(x), -1, 32)
    half_step = np.abs(blocks).max(-1) / 127 / 2                      # [tokens, blocks]
    weight_mass = np.abs(table).reshape(len(table), -1, 32).sum(-1)  # [vocab, blocks]
    bound = half_step @ weight_mass.T + 1e-4
    assert np.all(np.abs(got - exact) <= bound)
    assert np.abs(got - exact).max() > 0  # it does use int8 activations


def test_shared_and_separate_heads_agree_and_the_bundle_loses_the_heads_codes(heads):
    shared, separate = heads["shared"], heads["separate"]
    # Two roundings of one matrix (the table's integer zero points, the LutMatMul's fp16
    # ones) differ by about as much as each differs from fp32 on this tiny random model;
    # the shared head must be no further from the fp32 graph than the separate one.
    errors = [h.manifest["reference"]["measured"]["default"]["relative_error_vs_pytorch"]
              for h in (shared, separate)]
    assert errors[0] <= 1.25 * errors[1] + 0.02, errors
    model = onnx.load(str(separate.path / "model.onnx"))
    head_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                     if t.name.startswith("lm_head."))  # codes (rows padded to 32), scales, zp
    saved = separate.manifest["sizes"]["weight_bytes"] - shared.manifest["sizes"]["weight_bytes"]
    assert saved == head_bytes - 3 * 8  # less the Reshape's shape: 3 int64
    assert separate.manifest["sizes"]["bundle_bytes"] - shared.manifest["sizes"][
        "bundle_bytes"] >= head_bytes - 1024


def test_the_manifest_and_inspect_say_what_the_head_is(heads, capsys):
    m = heads["shared"].manifest
    assert m["decoder"]["head"]["storage"] == "shared"
    record = next(r for r in m["layers"] if r["name"] == "lm_head")
    assert record["shared_with"] == "embed_tokens.table" and record["bits"] == 4
    assert record["stored_bytes"] == m["quantization"]["embeddings"]["tables"][0][
        "stored_bytes"]
    assert m["sizes"]["linear_stored_bytes"] == sum(
        r["stored_bytes"] for r in m["layers"] if r["name"] != "lm_head")
    assert m["reference"]["measured"]["default"]["ok"]
    assert main(["inspect", str(heads["shared"].path)]) == 0
    shown = capsys.readouterr().out
    assert "head        tied, shared with the embedding table's 4-bit codes" in shown
    assert "lm_head reads embed_tokens.table's codes" in shown
    assert main(["inspect", str(heads["separate"].path)]) == 0
    assert "tied, stored separately (ai.edgepet.LutMatMul)" in capsys.readouterr().out


def test_the_head_is_separate_unless_asked(tmp_path, tiny_hf):
    # the default, from SmolLM2-135M's figures (docs/llm.md): shared saves the file 17.7 MB
    # but costs perplexity, resident memory and decode speed
    default = export_decoder(tiny_hf, tmp_path / "default")
    assert default.manifest["decoder"]["head"] == {
        "tied": True, "storage": "separate", "op": "ai.edgepet.LutMatMul"}


def test_the_shared_head_is_refused_cleanly_where_there_is_nothing_to_share(tmp_path, tiny_hf,
                                                                          capsys):
    ck = tiny_checkpoint()
    untied = dataclasses.replace(
        ck, config=dataclasses.replace(TINY, tie_word_embeddings=False),
        weights={**ck.weights, "lm_head.weight": ck.weights["model.embed_tokens.weight"] / 2})
    folder = write_hf_folder(tmp_path / "untied", untied)
    out = tmp_path / "out"
    assert main(["export", str(folder), "--tied-head", "shared", "-o", str(out),
                 "--quiet"]) == 2
    assert "output head of its own (tie_word_embeddings is false)" in capsys.readouterr().err
    assert not out.exists()
    assert export_decoder(folder, out).manifest["decoder"]["head"] == {
        "tied": False, "storage": "separate", "op": "ai.edgepet.LutMatMul"}
    with pytest.raises(BadInputError, match="the table is stored as 8"):
        export_decoder(tiny_hf, tmp_path / "e8", embedding=8, tied_head="shared")
    with pytest.raises(BadInputError, match="asked to be float"):
        export_decoder(tiny_hf, tmp_path / "k", keep=["lm_head"], tied_head="shared")
    with pytest.raises(SystemExit) as usage:  # argparse's choices
        main(["export", str(tiny_hf), "--tied-head", "both", "-o", str(out)])
    assert usage.value.code == 2 and "invalid choice: 'both'" in capsys.readouterr().err
    assert main(["export", "--example", "mlp", "--tied-head", "shared", "-o", str(out),
                 "--quiet"]) == 2
    assert "--tied-head applies to decoder checkpoints" in capsys.readouterr().err


def test_the_python_export_takes_the_head_choice_for_decoders_only(tmp_path, tiny_hf):
    import edgepet

    shared = edgepet.export(tiny_hf, tmp_path / "shared", bits=4, tied_head="shared")
    assert shared.manifest["decoder"]["head"]["storage"] == "shared"
    with pytest.raises(BadInputError, match="for decoder checkpoints"):
        edgepet.export("example:mlp", tmp_path / "mlp", tied_head="shared")
    with pytest.raises(BadInputError, match="for decoder checkpoints"):
        edgepet.export("example:mlp", tmp_path / "mlp", calibration_tokens=512)
    assert not (tmp_path / "mlp").exists()
