"""1-bit task adapters: one export, switched per run without reloading; PEFT LoRA merges."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from edgepet import pet
from edgepet.exporters import examples
from edgepet.exporters.pipeline import export
from edgepet.runtime.bundle import relative_error


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    base = examples.TinyLlama().eval()
    tuned = copy.deepcopy(base)
    pet.apply(tuned, "lora", target_modules=["q_proj", "v_proj", "down_proj"], r=8, bits=1)
    tasks = examples.random_lowbit_tasks(tuned, {"sst2": 1, "mnli": 2})
    out = tmp_path_factory.mktemp("adapters") / "bundle"
    # Base layers stay float (keep "*"), so the only approximation left is the kernels'.
    bundle = export(tasks["sst2"], out, target="x86-avx2", adapters=tasks, keep=["*"])
    return bundle, tasks


def _torch(model, inputs):
    with torch.no_grad():
        return model(torch.from_numpy(inputs["input_ids"])).numpy()


def test_switching_adapters_gives_each_tasks_pytorch_output(two_tasks):
    bundle, tasks = two_tasks
    session = bundle.session()
    inputs = bundle.reference_inputs()
    expected = {name: _torch(model, inputs) for name, model in tasks.items()}
    assert relative_error([expected["sst2"]], [expected["mnli"]]) > 0.1  # tasks differ
    for name in ["sst2", "mnli", "sst2", "mnli"]:
        session.set_adapter(name)
        got = session.run(inputs)["output"]
        assert relative_error([got], [expected[name]]) < 0.03, name
        other = "mnli" if name == "sst2" else "sst2"
        assert relative_error([got], [expected[other]]) > 0.1


def test_adapter_layers_keep_their_exact_1bit_codes(two_tasks):
    bundle, _ = two_tasks
    switchable = [layer for layer in bundle.layers if layer["switchable"]]
    assert len(switchable) == 2 * 3 * 2  # 2 blocks x 3 layers x (A, B)
    assert all(layer["bits"] == 1 for layer in switchable)
    base = [layer for layer in bundle.layers if not layer["switchable"]]
    assert all(layer["bits"] is None for layer in base)  # kept in float
    assert bundle.adapters == ["sst2", "mnli"]
    for entry in bundle.manifest["adapters"]:
        assert (bundle.path / entry["file"]).stat().st_size == entry["bytes"]
        assert entry["file"] == f"adapters/{entry['name']}.onnx_adapter"


def test_adapter_file_is_onnxruntime_adapter_format(two_tasks):
    import onnxruntime as ort

    bundle, _ = two_tasks
    adapter = ort.AdapterFormat.read_adapter(str(bundle.adapter_path("mnli")))
    params = adapter.get_parameters()
    assert sorted(params) == bundle.manifest["adapters"][1]["parameters"]
    assert any(name.endswith(".weight_packed") for name in params)


def test_verify_checks_every_adapter(two_tasks):
    bundle, _ = two_tasks
    results = bundle.verify()
    assert [r.adapter for r in results] == ["sst2", "mnli"]
    assert all(r.ok for r in results)


def test_quantized_base_with_two_adapters_stays_within_tolerance(tmp_path):
    base = examples.TinyMLP().eval()
    tuned = copy.deepcopy(base)
    pet.apply(tuned, "adapter", target_modules=["fc1", "fc2"], r=8, bits=1)
    tasks = {"a": _task_adapter(tuned, 3), "b": _task_adapter(tuned, 4)}
    bundle = export(tasks["a"], tmp_path / "b", target="x86-avx2", bits=4, adapters=tasks)
    results = bundle.verify()
    assert all(r.ok for r in results), [r.to_dict() for r in results]
    assert any(layer["switchable"] and layer["bias"] for layer in bundle.layers)


def _task_adapter(tuned, seed):
    model = copy.deepcopy(tuned)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    pet.binarize(model)
    return model.eval()


def _peft_folder(path, model, seed=0, r=4):
    from safetensors.torch import save_file

    path.mkdir()
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in ["fc1", "fc2"]:
        linear = model.get_submodule(name)
        tensors[f"base_model.model.{name}.lora_A.weight"] = 0.1 * torch.randn(
            r, linear.in_features, generator=gen)
        tensors[f"base_model.model.{name}.lora_B.weight"] = 0.1 * torch.randn(
            linear.out_features, r, generator=gen)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["fc1", "fc2"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def test_peft_lora_folder_merges_and_exports(tmp_path):
    model = examples.TinyMLP().eval()
    folder = _peft_folder(tmp_path / "peft", model)
    bundle = export(model, tmp_path / "b", target="x86-avx2", bits=4, adapters={"lora": folder})
    assert sorted(bundle.manifest["provenance"]["pet"]["merged"]) == ["fc1", "fc2"]
    assert bundle.adapters == []  # merged: nothing to switch
    tuned = copy.deepcopy(model)
    pet.load_peft(tuned, folder)
    x = bundle.reference_inputs()["x"]
    with torch.no_grad():
        expected = tuned(torch.from_numpy(x)).numpy()
        untuned = model(torch.from_numpy(x)).numpy()
    got = bundle.session().run({"x": x})["output"]
    assert relative_error([got], [expected]) < 0.35
    assert relative_error([got], [expected]) < relative_error([got], [untuned])
    np.testing.assert_allclose(bundle.reference_outputs()[0]["output"], expected, rtol=1e-5)


def test_two_peft_folders_become_switchable_adapters(tmp_path):
    model = examples.TinyMLP().eval()
    adapters = {"t1": _peft_folder(tmp_path / "p1", model, 1),
                "t2": _peft_folder(tmp_path / "p2", model, 2)}
    bundle = export(model, tmp_path / "b", target="x86-avx2", bits=4, adapters=adapters)
    assert bundle.adapters == ["t1", "t2"]
    assert all(r.ok for r in bundle.verify())


def test_tasks_that_differ_outside_their_adapters_are_refused(tmp_path):
    from edgepet.runtime.errors import BadInputError

    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "lora", target_modules=["fc1"], r=4, bits=1)
    a, b = examples.random_lowbit_tasks(tuned, {"a": 1, "b": 2}).values()
    with torch.no_grad():
        b.head.weight.mul_(2.0)  # a per-task head: not something an adapter file carries
    with pytest.raises(BadInputError, match="head.weight"):
        export(a, tmp_path / "b", target="x86-avx2", adapters={"a": a, "b": b})
    assert list(tmp_path.iterdir()) == []


def test_kbit_adapter_still_in_training_form_exports_its_rounded_weights(tmp_path):
    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "adapter", target_modules=["fc1"], r=8, bits=2, activation="relu")
    with torch.no_grad():
        tuned.fc1.up.weight.normal_(0, 0.1)
    bundle = export(tuned, tmp_path / "b", target="x86-avx2", bits=4)
    assert bundle.adapters == []  # not binarized, one task: nothing to switch
    names = {layer["name"] for layer in bundle.layers}
    assert {"fc1.down", "fc1.up", "fc1.base"} <= names
    assert all(r.ok for r in bundle.verify())


def test_each_adapter_matrix_is_quantized_once(tmp_path, monkeypatch):
    """Float LoRA tasks stay switchable and get quantized: the first task's matrices in
    the rewrite, and never again when its adapter file is written."""
    import hashlib

    from edgepet.exporters import pipeline
    from edgepet.quant import quantize

    seen: list[str] = []

    def counting_quantize(w, *args, **kwargs):
        seen.append(hashlib.sha256(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest())
        return quantize(w, *args, **kwargs)

    monkeypatch.setattr(pipeline, "quantize", counting_quantize)
    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "lora", target_modules=["fc1"], r=4)
    tasks = {}
    for name, seed in (("a", 1), ("b", 2)):
        model = copy.deepcopy(tuned)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_" in key:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        tasks[name] = model
    bundle = export(tasks["a"], tmp_path / "b", target="x86-avx2", adapters=tasks,
                    quantizer="rtn", bits=4)
    assert bundle.adapters == ["a", "b"]
    assert sum(layer["switchable"] for layer in bundle.layers) == 2  # fc1's A and B
    assert len(seen) == len(set(seen)), "a matrix was quantized twice"
    assert all(r.ok for r in bundle.verify())


def test_task_models_share_the_frozen_base_and_never_write_it():
    """A task loaded from a state dict costs its adapter, not a copy of the model; a base
    tensor the state changes is the task's own, and the user's model stays as it was."""
    from edgepet.exporters import adapters as adapters_io
    from edgepet.exporters import torch_export as tx

    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "lora", target_modules=["fc1"], r=4)
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    state = {k: v + 1.0 if k == "fc2.bias" else v.clone()
             for k, v in tuned.state_dict().items()}
    state["fc1.lora_B.weight"] = torch.ones_like(state["fc1.lora_B.weight"])
    tasks = adapters_io.task_models(tx.from_module(tuned), {"a": state})
    task = tasks["a"]
    assert task.fc1.base.weight is tuned.fc1.base.weight  # shared, frozen
    assert task.fc2.weight is tuned.fc2.weight
    assert task.fc2.bias is not tuned.fc2.bias  # changed by the state: its own
    assert torch.equal(task.fc2.bias, before["fc2.bias"] + 1.0)
    assert task.fc1.lora_B.weight is not tuned.fc1.lora_B.weight
    assert torch.equal(task.fc1.lora_B.weight, torch.ones_like(before["fc1.lora_B.weight"]))
    for key, value in tuned.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} of the user's model was written"


def test_merging_for_the_graph_leaves_the_tasks_base_weights_alone(tmp_path):
    tuned = examples.TinyMLP().eval()
    pet.apply(tuned, "lora", target_modules=["fc1"], r=4)
    with torch.no_grad():
        tuned.fc1.lora_B.weight.normal_()
    before = tuned.fc1.base.weight.detach().clone()
    export(tuned, tmp_path / "b", target="x86-avx2")
    assert torch.equal(tuned.fc1.base.weight, before)
