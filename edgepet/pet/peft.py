"""Reading Hugging Face PEFT adapters (LoRA, rsLoRA, MiSS/Bone) without ``peft``.

A PEFT ``save_pretrained`` folder holds ``adapter_config.json`` and
``adapter_model.safetensors``. Tensor names are ``base_model.model.<module>.<part>``,
e.g. ``base_model.model.layers.0.q_proj.lora_A.weight``; ``<module>`` must name a linear
layer of the model given here.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from edgepet.pet.bone import BoneBatLinear, BoneConfig, BoneLinear
from edgepet.pet.layer import PetError, PetLayer
from edgepet.pet.lora import LoraConfig, LoraLinear
from edgepet.pet.model import ApplyReport, install, linear_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SUPPORTED = ("LORA", "MISS", "BONE")

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_A|lora_B|miss_block|bone_block)"
    r"(?:\.default)?(?:\.(?P<leaf>weight|bias))?$"
)


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / f).is_file():
            raise PetError(
                f"PEFT folder '{folder}' has no {f} — load_peft reads a PEFT "
                f"save_pretrained folder ({CONFIG_FILE} + {WEIGHTS_FILE}); older .bin "
                f"weights must be re-saved as safetensors"
            )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise PetError(f"{folder / CONFIG_FILE} is not valid JSON: {e}") from e
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - safetensors is in the torch extra
        raise PetError("reading PEFT adapters needs safetensors: pip install safetensors") from e
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types
        raise PetError(f"{folder / WEIGHTS_FILE} could not be read: {e}") from e
    return config, tensors


def _group(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise PetError(
                f"PEFT tensor '{key}' is not one load_peft reads (LoRA A/B weights, MiSS/Bone "
                f"blocks) — DoRA, LoRA biases, embedding LoRA and modules_to_save are not "
                f"supported"
            )
        if m["part"] in ("lora_A", "lora_B") and m["leaf"] != "weight":
            raise PetError(f"PEFT tensor '{key}': LoRA biases (lora_bias=True) are not supported")
        modules[m["module"]][m["part"]] = t
    return modules


def _pattern_value(name: str, patterns: dict, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", name):
            return value
    return default


def _shape_error(name: str, part: str, t: torch.Tensor, expected: str) -> PetError:
    return PetError(
        f"PEFT adapter for '{name}': {part} has shape {list(t.shape)}, expected {expected} "
        f"— the adapter was trained for a different model"
    )


def _lora_layer(name: str, base: nn.Linear, parts: dict, config: dict) -> PetLayer:
    if set(parts) != {"lora_A", "lora_B"}:
        raise PetError(f"PEFT adapter for '{name}' has {sorted(parts)}, expected lora_A and lora_B")
    a, b = parts["lora_A"], parts["lora_B"]
    r = a.shape[0]
    if a.shape != (r, base.in_features):
        raise _shape_error(name, "lora_A.weight", a, f"[r, {base.in_features}]")
    if b.shape != (base.out_features, r):
        raise _shape_error(name, "lora_B.weight", b, f"[{base.out_features}, {r}]")
    alpha = _pattern_value(name, config.get("alpha_pattern"), config.get("lora_alpha", 8))
    layer = LoraLinear(base, LoraConfig(r=r, alpha=float(alpha), rslora=bool(
        config.get("use_rslora", False))))
    with torch.no_grad():
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
    return layer


def _miss_layer(name: str, base: nn.Linear, parts: dict, config: dict) -> PetLayer:
    (part, block), = parts.items()
    mode = config.get("init_weights", True)
    out = base.out_features
    if mode == "bat":
        r = block.shape[-1]
        if block.shape != (out // r, r, r):
            raise _shape_error(name, part, block, f"[{out} / r, r, r]")
        layer: PetLayer = BoneBatLinear(base, BoneConfig(r=r))
    else:
        r = block.shape[0]
        if mode == "mini":
            mini = block.shape[1]
            if block.dim() != 2 or out % mini:
                raise _shape_error(name, part, block, f"[r, mini_r] with mini_r dividing {out}")
            block = block.repeat(1, out // mini)  # the tied blocks, untied
        if block.shape != (r, out):
            raise _shape_error(name, part, block, f"[r, {out}]")
        layer = BoneLinear(base, BoneConfig(r=r))
    with torch.no_grad():
        layer.bone_block.copy_(block)
    return layer


def _check_config(config: dict, path: Path) -> str:
    """The upper-case ``peft_type``, after refusing what load_peft cannot read."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in SUPPORTED:
        raise PetError(
            f"{path}: peft_type {config.get('peft_type')!r} is not supported "
            f"— load_peft reads {', '.join(SUPPORTED)}"
        )
    if config.get("use_dora"):
        raise PetError(f"{path}: DoRA (use_dora=true) is not supported")
    if config.get("fan_in_fan_out"):
        raise PetError(
            f"{path}: fan_in_fan_out=true (GPT-2 Conv1D layers) is not supported — "
            f"edgepet wraps nn.Linear"
        )
    return peft_type


def load_peft(model: nn.Module, folder: str | Path) -> ApplyReport:
    """Load a PEFT LoRA / rsLoRA / MiSS / Bone adapter onto ``model`` as edgepet layers.

    The model must be the one PEFT wrapped (its module names are the keys' middle
    part). Like :func:`edgepet.pet.apply`, the rest of the model is frozen. Errors
    (missing files, unsupported ``peft_type`` or options, keys naming no linear layer,
    shapes that disagree) leave the model unchanged.
    """
    folder = Path(folder)
    config, tensors = _read(folder)
    peft_type = _check_config(config, folder / CONFIG_FILE)
    linears = linear_layers(model)
    make = _lora_layer if peft_type == "LORA" else _miss_layer
    groups = _group(tensors)
    order = {n: i for i, n in enumerate(linears)}
    new_layers = {}
    for name, parts in sorted(groups.items(), key=lambda item: order.get(item[0], -1)):
        if name not in linears:
            near = ", ".join(n for n in linears if n.split(".")[-1] == name.split(".")[-1])
            raise PetError(
                f"PEFT adapter names module '{name}', which is not a linear layer of this "
                f"model{' (similar: ' + near + ')' if near else ''} — pass the model PEFT "
                f"wrapped (keys are base_model.model.<module name>)"
            )
        new_layers[name] = make(name, linears[name], parts, config)
    if not new_layers:
        raise PetError(f"{folder / WEIGHTS_FILE} holds no adapter tensors")
    return install(model, "lora" if peft_type == "LORA" else "bone", new_layers)
