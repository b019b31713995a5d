"""Model-level operations, written once for every method: apply, merge, binarize.

Every operation first builds or computes everything it needs and only then changes the
model, so an error half-way leaves the user's model as it was.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgepet.pet.adapter import AdapterConfig, AdapterLinear
from edgepet.pet.bone import BoneBatLinear, BoneConfig, BoneLinear
from edgepet.pet.gating import GatedAdapterLinear, GatingConfig
from edgepet.pet.layer import PetError, PetLayer
from edgepet.pet.lora import LoraConfig, LoraLinear
from edgepet.pet.lowbit import LowBitMatrix
from edgepet.quant.model import output_head
from edgepet.quant.select import ALL_LINEAR, name_matches, select_names

#: method name -> (config dataclass, layer class)
METHODS: dict[str, tuple[type, type[PetLayer]]] = {
    "lora": (LoraConfig, LoraLinear),
    "bone": (BoneConfig, BoneLinear),
    "miss": (BoneConfig, BoneLinear),
    "bone-bat": (BoneConfig, BoneBatLinear),
    "adapter": (AdapterConfig, AdapterLinear),
    "gating": (GatingConfig, GatedAdapterLinear),
    "vl-pet": (GatingConfig, GatedAdapterLinear),
}


@dataclass
class ApplyReport:
    """What :func:`apply` did: the wrapped layers and the parameter counts."""

    method: str
    layers: list[str]
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return (
            f"{self.method}: {len(self.layers)} layers, trainable {self.trainable:,} of "
            f"{self.total:,} parameters ({share:.2f}%)"
        )


@dataclass
class MergeReport:
    """What :func:`merge` or :func:`unmerge` changed, and the layers that stayed modules."""

    layers: list[str] = field(default_factory=list)
    not_mergeable: dict[str, str] = field(default_factory=dict)


@dataclass
class StorageReport:
    """Bytes of each PET layer's update as shipped (one task's adapter file)."""

    layers: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.layers.values())

    def __str__(self) -> str:
        return f"{len(self.layers)} PET layers, {self.total:,} bytes"


def pet_layers(model: nn.Module) -> dict[str, PetLayer]:
    """Every PET layer in ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PetLayer)}


def _attention_projections(model: nn.Module) -> set[str]:
    """Linear layers of ``nn.MultiheadAttention``, which reads their ``.weight`` directly
    instead of calling them, so a wrapper's update would be silently ignored."""
    return {
        f"{n}.{child}" if n else child
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child, c in m.named_children()
        if isinstance(c, nn.Linear)
    }


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers PET can wrap: not inside a PET layer or ``nn.MultiheadAttention``,
    and not the model itself."""
    skip = {f"{n}.base" for n in pet_layers(model)} | _attention_projections(model)
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n and n not in skip
    }


def _targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    linears = linear_layers(model)
    wrapped = {f"{n}.base": n for n in pet_layers(model)}
    if target_modules == ALL_LINEAR:
        head = output_head(model)
        names = [n for n in linears if n != head]
        if not names:
            raise PetError("'all-linear' found no linear layer besides the output head")
        return names
    for name in _attention_projections(model):
        if name_matches(name, target_modules):
            raise PetError(
                f"layer '{name}' belongs to an nn.MultiheadAttention, which reads its weight "
                f"directly, so a PET layer there would be ignored — target other layers, or "
                f"use an attention module that calls its projections"
            )
    for inner, outer in wrapped.items():
        if name_matches(outer, target_modules) or name_matches(inner, target_modules):
            raise PetError(
                f"layer '{outer}' already has a {pet_layers(model)[outer].method} layer — "
                f"merge and unload it first (edgepet.pet.merge, edgepet.pet.unload)"
            )
    try:
        return select_names(linears, target_modules, what="linear layer")
    except ValueError as e:
        raise PetError(str(e)) from None


def _make_config(method: str, config: dict) -> object:
    if method not in METHODS:
        raise PetError(f"unknown PET method {method!r} — use one of {', '.join(METHODS)}")
    config_type = METHODS[method][0]
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise PetError(
            f"{method} has no setting {', '.join(map(repr, unknown))} — its settings are "
            f"{', '.join(sorted(known))}"
        )
    try:
        return config_type(**config)
    except ValueError as e:
        raise PetError(str(e)) from e


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply(
    model: nn.Module,
    method: str,
    target_modules: str | Sequence[str] = ALL_LINEAR,
    also_train: Sequence[str] = (),
    **config,
) -> ApplyReport:
    """Wrap matching linear layers with a PET method, freeze everything else.

    Args:
        model: any ``nn.Module``; changed in place.
        method: "lora", "bone" (alias "miss"), "bone-bat", "adapter", "gating"
            (alias "vl-pet"). k-bit adapters: "adapter" or "lora" with ``bits=1..4``.
        target_modules: "all-linear" (every linear layer but the output head), a
            full-match regex, or a list of names / name suffixes.
        also_train: modules (names or suffixes) that stay trainable besides the PET
            parameters, e.g. a new classifier head.
        **config: the method's settings (fields of its config dataclass).

    Returns:
        An :class:`ApplyReport` with the wrapped layers and trainable parameter counts.
    """
    cfg = _make_config(method, config)
    layer_type = METHODS[method][1]
    linears = linear_layers(model)
    new_layers = {}
    for name in _targets(model, target_modules):
        try:
            new_layers[name] = layer_type(linears[name], cfg)
        except (PetError, ValueError) as e:
            raise PetError(f"{method} on layer '{name}': {e}") from e
    keep = [n for n, _ in model.named_modules() if also_train and name_matches(n, also_train)]
    if also_train and not keep:
        raise PetError(f"also_train={list(also_train)!r} matches no module")
    return install(model, method, new_layers, keep)


def install(
    model: nn.Module, method: str, new_layers: dict[str, PetLayer], also_train: Sequence[str] = ()
) -> ApplyReport:
    """Put built PET layers into ``model`` and freeze all but PET (and ``also_train``)
    parameters. Nothing here can fail half-way, so callers build everything first."""
    for name, layer in new_layers.items():
        _set_module(model, name, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in pet_layers(model).values():
        for p in layer.pet_parameters():
            p.requires_grad_(True)
    for name in also_train:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ApplyReport(method, list(new_layers), trainable, total)


def _check_finite(name: str, w: torch.Tensor, what: str) -> None:
    if not torch.isfinite(w).all():
        raise PetError(
            f"{what} of layer '{name}' produced non-finite weights (NaN or inf) — the "
            f"adapter's parameters have diverged; nothing was changed"
        )


@torch.no_grad()
def merge(model: nn.Module) -> MergeReport:
    """Fold every mergeable PET layer's update into its base weight.

    Layers that cannot merge (non-linear adapters, gates) stay active modules; they are
    listed in the report and named in a warning. All-or-nothing: if any merge would give
    non-finite weights, nothing changes and :class:`PetError` names the layer.
    """
    report = MergeReport()
    new_weights = {}
    for name, layer in pet_layers(model).items():
        if layer.merged:
            continue
        if not layer.is_mergeable():
            report.not_mergeable[name] = f"{layer.method}: {layer.not_mergeable_reason}"
            continue
        w = layer.base.weight + layer.delta_weight().to(layer.base.weight.dtype)
        _check_finite(name, w, "merging")
        new_weights[name] = w
    report.layers += _commit(model, new_weights, merged=True)
    if report.not_mergeable:
        warnings.warn(
            "these PET layers cannot merge and stay modules: "
            + "; ".join(f"{n} ({why})" for n, why in report.not_mergeable.items()),
            stacklevel=2,
        )
    return report


@torch.no_grad()
def unmerge(model: nn.Module) -> MergeReport:
    """Take every merged update back out of its base weight (exact to float rounding).

    All-or-nothing, like :func:`merge`.
    """
    report = MergeReport()
    restored = {}
    for name, layer in pet_layers(model).items():
        if not layer.merged:
            continue
        try:
            w = layer.unmerged_weight(layer.base.weight.detach().clone())
        except PetError as e:
            raise PetError(f"unmerging layer '{name}': {e}") from e
        _check_finite(name, w, "unmerging")
        restored[name] = w
    report.layers += _commit(model, restored, merged=False)
    return report


def _commit(model: nn.Module, weights: dict[str, torch.Tensor], merged: bool) -> list[str]:
    """Write base weights computed (and checked) in full beforehand: all or nothing."""
    for name, w in weights.items():
        layer = model.get_submodule(name)
        layer.base.weight.copy_(w)
        layer.merged = merged
    return list(weights)


def unload(model: nn.Module) -> list[str]:
    """Replace every merged PET layer with its (merged) base ``nn.Linear``.

    Unmerged layers stay as they are. Returns the names replaced.
    """
    if isinstance(model, PetLayer):
        raise PetError("unload replaces layers inside a model; for a single layer use .base")
    done = []
    for name, layer in pet_layers(model).items():
        if layer.merged:
            _set_module(model, name, layer.base)
            done.append(name)
    return done


def binarize(model: nn.Module) -> StorageReport:
    """Freeze every k-bit adapter matrix into packed codes plus mean and std.

    After this the matrices no longer train; the forward pass uses exactly the
    dequantized codes (for 1 bit, :meth:`PetLayer.quantized_weights` gives them as
    ``QuantizedTensor``; for 2-4 bits :meth:`PetLayer.frozen_weights` gives floats).
    Returns the stored bytes per PET layer: one task's adapter file.
    """
    packed = {}
    for name, module in model.named_modules():
        if isinstance(module, LowBitMatrix):
            packed[name] = module.packed()
    if not packed:
        raise PetError(
            "binarize found no k-bit adapter matrix — apply 'adapter' or 'lora' with bits=1..4"
        )
    for name, frozen in packed.items():
        _set_module(model, name, frozen)
    return stored_bytes(model)


def stored_bytes(model: nn.Module) -> StorageReport:
    """Bytes of each PET layer's update as it would be shipped apart from the base."""
    return StorageReport({n: layer.stored_bytes() for n, layer in pet_layers(model).items()})
