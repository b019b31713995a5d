"""One adapter merged into a decoder checkpoint's projections before quantization.

An adapter is a Hugging Face PEFT folder (LoRA, rsLoRA, MiSS/Bone; read by
:func:`edgepet.pet.load_peft`) or, in Python, a model carrying ``edgepet.pet`` layers
(e.g. a ``transformers`` Llama tuned with ``edgepet.pet.apply(model, "lora")``). Each
adapted projection gets ``W + delta_weight()`` — the update ``edgepet.pet.merge`` folds in —
so exporting the checkpoint with its adapter equals exporting the merged float model.

Decoders take one adapter: switchable adapters (``adapters/NAME.onnx_adapter``) need the
projections as graph inputs, which the fused ``qkv``/``gate_up`` decoder graph does not have.
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


def single_adapter(adapters: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """The one (name, adapter) of ``adapters``, None for none; several are refused."""
    if not adapters:
        return None
    if len(adapters) > 1:
        raise BadInputError(
            f"decoder bundles take one adapter, merged into the weights, but "
            f"{len(adapters)} were given ({', '.join(adapters)}) — switchable adapters are "
            "not supported for decoders yet; export one bundle per adapter")
    return next(iter(adapters.items()))


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


__all__ = ["merge_adapter", "single_adapter"]
