"""Quantizing a whole PyTorch model's linear layers and reporting each layer's error.

torch is imported inside the functions, so ``edgepet.quant`` still imports on a device
without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgepet.quant.rtn import quantize
from edgepet.quant.search import QuantError, quantization_error, search_quantize
from edgepet.quant.select import ALL_LINEAR, name_matches, select_names
from edgepet.quant.tensor import Bits, QuantizedTensor

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def output_head(model: nn.Module) -> str | None:
    """Name of the model's output head: the module ``get_output_embeddings()`` returns
    if the model has that method (Hugging Face models), else the last ``nn.Linear``."""
    from torch import nn

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    last = None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
        if isinstance(module, nn.Linear):
            last = name
    return last


def select_linear_layers(
    model: nn.Module,
    layers: str | Sequence[str] = ALL_LINEAR,
    skip: Sequence[str] = (),
) -> list[str]:
    """Names of the ``nn.Linear`` layers to quantize.

    ``layers="all-linear"`` takes every linear layer except the output head (see
    :func:`output_head`); embeddings are never ``nn.Linear``, so they are never taken.
    Name the head explicitly (a regex or a list of names/suffixes, as in
    :mod:`edgepet.quant.select`) to include it. ``skip`` removes names or suffixes.
    Linear layers wrapped by PET layers appear as ``<name>.base``.
    """
    from torch import nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layers == ALL_LINEAR:
        head = output_head(model)
        picked = [n for n in names if n != head]
    else:
        picked = select_names(names, layers, what="linear layer", argument="layers")
    picked = [n for n in picked if not (skip and name_matches(n, skip))]
    if not picked:
        raise ValueError(f"no linear layer left to quantize (layers={layers!r}, skip={skip!r})")
    return picked


@dataclass
class LayerReport:
    """One row of the per-layer error report."""

    name: str
    shape: tuple[int, int]
    bits: Bits
    group_size: int
    error: QuantError
    rtn_error: QuantError | None = None


@dataclass
class QuantizedModel:
    """The quantized weights of a model's linear layers, and how much each one lost."""

    weights: dict[str, QuantizedTensor]
    report: list[LayerReport] = field(default_factory=list)

    def nbytes(self) -> int:
        """Bytes of all codes, scales and zero points."""
        return sum(qt.nbytes_packed() for qt in self.weights.values())

    def table(self) -> str:
        """The per-layer error report as a Markdown table."""
        rows = [
            "| layer | shape | bits | group | weight rel. err | output rel. err "
            + "| RTN weight / output rel. err |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.report:
            out = "—" if r.error.output_rel is None else f"{r.error.output_rel:.4f}"
            rtn = "—"
            if r.rtn_error is not None:
                rtn_out = r.rtn_error.output_rel
                rtn = f"{r.rtn_error.weight_rel:.4f} / " + (
                    "—" if rtn_out is None else f"{rtn_out:.4f}"
                )
            rows.append(
                f"| {r.name} | {r.shape[0]}×{r.shape[1]} | {r.bits} | {r.group_size} | "
                f"{r.error.weight_rel:.4f} | {out} | {rtn} |"
            )
        return "\n".join(rows)

    def apply_to(self, model: nn.Module) -> None:
        """Write the dequantized weights into ``model`` (fake quantization), e.g. to
        measure its accuracy in PyTorch. All layers are checked before any is written."""
        import torch

        modules = dict(model.named_modules())
        new = {}
        for name, qt in self.weights.items():
            module = modules.get(name)
            if module is None or tuple(module.weight.shape) != qt.shape:
                raise ValueError(
                    f"layer '{name}' is missing from the model or not {qt.shape[0]}×"
                    f"{qt.shape[1]} — apply_to takes the model that was quantized"
                )
            new[name] = torch.from_numpy(qt.dequantize()).to(module.weight)
        with torch.no_grad():
            for name, w in new.items():
                modules[name].weight.copy_(w)


def collect_activations(
    model: nn.Module, layers: Sequence[str], batches: Iterable, max_rows: int = 2048
) -> dict[str, np.ndarray]:
    """Inputs seen by each named linear layer while running ``batches`` through the model.

    Each batch is passed as ``model(*batch)`` if it is a tuple/list, else ``model(batch)``.
    At most ``max_rows`` input rows are kept per layer.
    """
    import torch

    seen: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def record(_module, inputs, _output):
            if counts[name] < max_rows:
                rows = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                rows = rows[: max_rows - counts[name]].float().cpu().numpy()
                seen[name].append(rows)
                counts[name] += rows.shape[0]

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if not seen[n]]
    if missing:
        raise ValueError(
            f"calibration batches never reached layers {missing[:5]} — check that the "
            f"batches are valid inputs of this model"
        )
    return {n: np.concatenate(seen[n]) for n in layers}


def quantize_model(
    model: nn.Module,
    bits: Bits = 4,
    group_size: int | str | None = 64,
    symmetric: bool = True,
    layers: str | Sequence[str] = ALL_LINEAR,
    skip: Sequence[str] = (),
    method: Literal["rtn", "search"] = "rtn",
    calibration: Iterable | None = None,
    zero_level: bool = False,
) -> QuantizedModel:
    """Quantize the weights of a model's linear layers; the model is not changed.

    Args:
        model: a PyTorch model (merged PET layers are quantized through their base).
        bits, group_size, symmetric, zero_level: as for :func:`edgepet.quant.quantize`.
        layers, skip: which layers (see :func:`select_linear_layers`; the output head is
            skipped by default).
        method: "rtn" rounds to nearest; "search" minimizes error per group
            (:func:`edgepet.quant.search.search_quantize`).
        calibration: model inputs (an iterable of batches). With "search" the output
            error on them is minimized; either way the report shows output errors.

    Returns a :class:`QuantizedModel` with a :class:`QuantizedTensor` per layer and the
    per-layer error report (with "search", RTN's errors alongside).
    """
    if method not in ("rtn", "search"):
        raise ValueError(f"method={method!r} is unknown — use 'rtn' or 'search'")
    names = select_linear_layers(model, layers, skip)
    acts = collect_activations(model, names, calibration) if calibration is not None else {}
    result = QuantizedModel({})
    for name in names:
        w = model.get_submodule(name).weight.detach().float().cpu().numpy()
        x = acts.get(name)
        try:
            rtn = quantize(w, bits, group_size, symmetric, zero_level)
            qt = rtn if method == "rtn" else search_quantize(w, bits, group_size, symmetric, x,
                                                             zero_level=zero_level)
        except ValueError as e:
            raise ValueError(f"quantizing layer '{name}' {w.shape[0]}×{w.shape[1]}: {e}") from e
        result.weights[name] = qt
        result.report.append(
            LayerReport(
                name,
                qt.shape,
                qt.bits,
                qt.group_size,
                quantization_error(w, qt, x),
                None if method == "rtn" else quantization_error(w, rtn, x),
            )
        )
    return result
