"""Hugging Face models saved the ways people save them: torch.export.save works (in a fresh
process too, where nothing has registered transformers' output types with pytree yet), and
torch.jit.trace either works (return_dict=False) or says what to do."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch


def _inputs():
    ids = torch.randint(5, 40, (2, 8))
    return ids, torch.ones_like(ids)


def test_a_saved_torch_export_program_of_a_bert_exports_in_a_fresh_process(bert_folder,
                                                                          tmp_path):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(bert_folder)).eval()
    torch.export.save(torch.export.export(model, _inputs()), tmp_path / "bert.pt2")
    done = subprocess.run([sys.executable, "-m", "edgepet.cli", "export",
                           str(tmp_path / "bert.pt2"), "-o", str(tmp_path / "b"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "damaged" not in done.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["last_hidden_state", "pooler_output"]


def test_a_traced_bert_that_returns_a_dict_gets_told_what_to_do(bert_folder, tmp_path, cli):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(bert_folder)).eval()
    torch.jit.save(torch.jit.trace(model, _inputs(), strict=False), tmp_path / "bert.ts")
    code, _, err = cli("export", tmp_path / "bert.ts", "-o", tmp_path / "o", "--quiet")
    assert code == 2
    assert "return_dict = False" in err and "edgepet export DIR" in err


def test_a_bert_traced_returning_tuples_exports_with_its_input_names(bert_folder, tmp_path,
                                                                     cli):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(bert_folder)).eval()
    model.config.return_dict = False
    torch.jit.save(torch.jit.trace(model, _inputs()), tmp_path / "bert.ts")
    code, _, err = cli("export", tmp_path / "bert.ts", "-o", tmp_path / "b", "--quiet")
    assert code == 0, err
    from edgepet.runtime.bundle import Bundle

    bundle = Bundle.open(tmp_path / "b")
    assert [i["name"] for i in bundle.manifest["inputs"]] == ["input_ids", "attention_mask"]
    ref = bundle.reference_inputs()
    assert ref["attention_mask"].min() == 0  # the example has padding: the mask matters
    assert np.isfinite(bundle.session().run(ref)["output_0"]).all()
