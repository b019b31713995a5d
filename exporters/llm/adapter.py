"""Adapters for decoder checkpoints: one merges into the projections, several switch.

An adapter is a Hugging Face PEFT folder (LoRA, rsLoRA, MiSS/Bone; read by
:func:`edgepet.pet.load_peft`) or, in Python, a model carrying ``edgepet.pet`` layers
(e.g. a ``transformers`` Llama tuned with ``edgepet.pet.apply(model, "lora")``). Each
adapted projection gets ``W + delta_weight()`` — the update ``edgepet.pet.merge`` folds in —
so exporting the checkpoint with its adapter equals exporting the merged float model.

With several adapters each one gives a checkpoint of its own (:func:`task_checkpoints`);
the fused projections (``qkv``, ``gate_up``, ...) whose weights differ between them stay
switchable (:func:`switchable_projections`): their tensors become graph inputs whose
defaults are the first adapter's, and each adapter's tensors go into
``adapters/NAME.onnx_adapter`` (:func:`adapter_tensors`, written by
``exporters.adapters.write_adapters``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.exporters.llm.checkpoint import Checkpoint
from edgepet.runtime.errors import BadInputError

#: What ``--adapter`` accepts for a decoder, for error messages.
ACCEPTED = ("a PEFT folder (adapter_config.json + adapter_model.safetensors)"
            " or, in Python, a model carrying edgepet.pet layers")


def check_names(adapters: Mapping[str, Any] | None) -> None:
    """Adapter names name files (``adapters/NAME.onnx_adapter``): letters, digits, _.-"""
    for name in adapters or {}:
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise BadInputError(f"adapter name {name!r} must use letters, digits, '_', '.' "
                                "or '-' (it names adapters/NAME.onnx_adapter)")


def task_checkpoints(ck: Checkpoint, adapters: Mapping[str, Any] | None
                     ) -> tuple[dict[str, Checkpoint], dict[str, Any] | None]:
    """Adapter name -> ``ck`` with that adapter merged (empty without adapters), and the
    provenance record: ``merged`` for one adapter, the adapters' records for several."""
    if not adapters:
        return {}, None
    tasks, records = {}, []
    for name, adapter in adapters.items():
        tasks[name], record = merge_adapter(ck, name, adapter)
        records.append(record)
    if len(records) == 1:
        return tasks, records[0]
    for record in records:
        record["merged"] = False
    return tasks, {"merged": False, "tasks": records}


def switchable_projections(tasks: Mapping[str, Checkpoint]) -> list[str]:
    """Names of the (fused) projections whose weights differ between the checkpoints."""
    from edgepet.exporters.llm.graph import projections

    if len(tasks) < 2:
        return []
    cks = list(tasks.values())
    first, others = cks[0], cks[1:]
    return [p.name for p in projections(first.config) if any(
        any(o.weights[part] is not first.weights[part]
            and not np.array_equal(o.weights[part], first.weights[part]) for part in p.parts)
        for o in others)]


def adapter_tensors(task_weights: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Adapter -> the tensors its file carries: every initializer of its switchable
    projections (codes, scales, zero points; or a kept projection's float matrix)."""
    from edgepet.exporters.llm.graph import projection_tensors

    files: dict[str, dict[str, np.ndarray]] = {}
    for task, weights in task_weights.items():
        files[task] = {}
        for name, weight in weights.items():
            files[task].update(projection_tensors(weight, name))
    return files


def merge_adapter(ck: Checkpoint, name: str, adapter: Any) -> tuple[Checkpoint, dict[str, Any]]:
    """``ck`` with ``adapter`` merged into its projections, and a provenance record.

    ``ck`` itself is not changed: merged projections are new arrays, the rest is shared.
    """
    import torch

    if isinstance(adapter, torch.nn.Module):
        layers, source = _pet_layers(adapter, f"adapter {name!r}"), "edgepet.pet model"
    else:
        path = Path(os.fspath(adapter))
        if not path.is_dir():
            raise BadInputError(f"adapter {name!r}: {path} is not a folder — a decoder "
                                f"adapter is {ACCEPTED}")
        layers, source = _peft_layers(ck, path, name), str(path)
    weights = dict(ck.weights)
    merged = []
    with torch.no_grad():
        for module, layer in layers.items():
            key = _weight_key(ck, module)
            if key is None:
                raise BadInputError(f"adapter {name!r} adapts {module!r}, which is not a "
                                    "projection of this model (q/k/v/o_proj, gate/up/down_proj"
                                    " or an untied lm_head)")
            if not layer.is_mergeable():
                raise BadInputError(f"adapter {name!r}: {module} ({layer.method}) does not "
                                    f"merge ({layer.not_mergeable_reason}) — decoders take "
                                    "adapters that merge (LoRA, MiSS/Bone)")
            delta = layer.delta_weight().detach().to(torch.float32).numpy()
            w = weights[key] + delta
            if w.shape != weights[key].shape or not np.isfinite(w).all():
                raise BadInputError(f"adapter {name!r}: merging {module} gives "
                                    "non-finite weights — the adapter has diverged")
            weights[key] = np.ascontiguousarray(w, np.float32)
            merged.append(key.removesuffix(".weight"))
    record = {"name": name, "source": source, "merged": True, "layers": merged}
    return dataclasses.replace(ck, weights=weights), record


def _weight_key(ck: Checkpoint, module: str) -> str | None:
    """The checkpoint weight a module name adapts (``model.`` prefix optional)."""
    for key in (f"{module}.weight", f"model.{module}.weight"):
        if key in ck.weights and key != "model.embed_tokens.weight" \
                and ck.weights[key].ndim == 2:
            return key
    return None


def _pet_layers(model: Any, what: str) -> dict[str, Any]:
    from edgepet import pet

    layers = {n: layer for n, layer in pet.pet_layers(model).items() if not layer.merged}
    if not layers:
        raise BadInputError(f"{what}: the model carries no unmerged edgepet.pet layer — a "
                            f"decoder adapter is {ACCEPTED}")
    return layers


def _peft_layers(ck: Checkpoint, folder: Path, name: str) -> dict[str, Any]:
    """The PEFT adapter's layers on a skeleton of ``ck``'s projections (no weight copied)."""
    from edgepet import pet

    skeleton = _skeleton(ck)
    try:
        pet.load_peft(skeleton, folder)
    except (ValueError, pet.PetError) as error:
        raise BadInputError(f"adapter {name!r}: {error}") from None
    return _pet_layers(skeleton, f"adapter {name!r}")


def _skeleton(ck: Checkpoint) -> Any:
    """An ``nn.Module`` with one ``nn.Linear`` per projection under its Hugging Face name
    (``model.layers.0.self_attn.q_proj``), sharing the checkpoint's arrays."""
    import torch
    from torch import nn

    root = nn.Module()
    for key, w in ck.weights.items():
        if w.ndim != 2 or key == "model.embed_tokens.weight" or not key.endswith(".weight"):
            continue
        parent = root
        *path, leaf = key.removesuffix(".weight").split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        with warnings.catch_warnings():  # a GGUF's arrays may be read-only: never written
            warnings.simplefilter("ignore", UserWarning)
            linear.weight = nn.Parameter(torch.from_numpy(w), requires_grad=False)
        parent.add_module(leaf, linear)
    return root


__all__ = ["adapter_tensors", "check_names", "merge_adapter", "switchable_projections",
           "task_checkpoints"]
