"""Task adapters: which PET layers stay switchable, and their ONNX Runtime adapter files.

A task is a model carrying one task's adapter (a tuned copy of the model, a state dict
loaded onto a copy, or a Hugging Face PEFT folder). PET layers that hold binarized
(packed) matrices, or whose weights differ between tasks, stay *switchable*: their
LutMatMul weights become graph inputs with the first task's values as defaults, and each
task's values go into ``adapters/TASK.onnx_adapter`` (``onnxruntime.AdapterFormat``). Every
other PET layer is merged into its base weight where its math allows.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from edgepet import pet
from edgepet.exporters import torch_export as tx
from edgepet.exporters.rewrite import KnownWeight, LayerRecord, QuantPolicy, RewriteResult, digest
from edgepet.quant import QuantizedTensor
from edgepet.runtime import bundle as bundle_io
from edgepet.runtime.errors import BadInputError


def task_models(loaded: tx.LoadedModel, adapters: Mapping[str, Any] | None) -> dict[str, nn.Module]:
    """Task name -> a model carrying that task's adapter (first task: the graph's)."""
    base = loaded.model
    if not adapters:
        if isinstance(base, nn.Module) and _packed_layers(base):
            return {"default": base}
        return {}
    if not isinstance(base, nn.Module) or isinstance(base, torch.jit.ScriptModule):
        raise BadInputError(
            f"adapters need the model as an nn.Module, but it is a {loaded.kind} — give a "
            "state dict with --arch (or a pickled module with --trust)"
        )
    tasks = {}
    for name, value in adapters.items():
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise BadInputError(f"adapter name {name!r} must use letters, digits, '_', '.' "
                                "or '-' (it names adapters/NAME.onnx_adapter)")
        tasks[name] = _task_model(base, name, value).eval()
    return tasks


def _task_model(base: nn.Module, name: str, value: Any) -> nn.Module:
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, Mapping):
        return _with_state(base, dict(value), f"adapter {name!r}")
    path = Path(value)
    if path.is_dir():
        model, _ = copy_sharing_base(base)
        try:
            pet.load_peft(model, path)
        except ValueError as error:
            raise BadInputError(f"adapter {name!r}: {error}") from None
        return model
    if not path.is_file():
        raise BadInputError(f"adapter {name!r}: {path} does not exist — give a PEFT folder "
                            "or a state-dict file")
    if path.suffix == ".safetensors":
        state = tx._read_safetensors(path)
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001
            raise BadInputError(f"adapter {name!r}: {path} is not a state dict of tensors "
                                f"({tx._first_line(error)})") from None
    return _with_state(base, state, f"adapter {name!r} from {path}")


def copy_sharing_base(model: nn.Module) -> tuple[nn.Module, set[int]]:
    """A deep copy of ``model`` that shares its frozen base tensors with it.

    Every parameter and buffer is shared except those a PET layer owns besides its
    ``base`` (adapter matrices, packed codes), so a task costs its adapter's size, not
    the model's. Returns the copy and the ids of the shared tensors, which must not be
    written in place (:func:`own_tensor` gives the copy its own first).
    """
    own: set[int] = set()
    for layer in pet.pet_layers(model).values():
        for key, tensor in itertools.chain(layer.named_parameters(), layer.named_buffers()):
            if not key.startswith("base."):
                own.add(id(tensor))
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())
            if id(t) not in own}
    return copy.deepcopy(model, memo), set(memo)


def own_tensor(model: nn.Module, key: str) -> None:
    """Replace the parameter or buffer ``key`` of ``model`` by a private clone."""
    parent_name, _, attr = key.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    tensor = getattr(parent, attr)
    if isinstance(tensor, nn.Parameter):
        setattr(parent, attr, nn.Parameter(tensor.detach().clone(),
                                           requires_grad=tensor.requires_grad))
    else:
        parent.register_buffer(attr, tensor.detach().clone())


def _with_state(base: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """A copy of ``base`` sharing its frozen tensors, with ``state`` loaded; a tensor the
    state changes is cloned first, so ``base`` itself is never written."""
    model, shared = copy_sharing_base(base)
    current = model.state_dict(keep_vars=True)
    changed = {}
    for key, value in state.items():
        tensor = current.get(key)
        if tensor is None or id(tensor) not in shared:
            changed[key] = value
        elif not (isinstance(value, torch.Tensor) and value.shape == tensor.shape
                  and torch.equal(value.to(tensor.dtype), tensor.detach())):
            own_tensor(model, key)
            changed[key] = value
    tx.load_state(model, changed, what, strict=False)
    return model


def _packed_layers(model: nn.Module) -> set[str]:
    return {name for name, layer in pet.pet_layers(model).items()
            if any(isinstance(c, pet.PackedMatrix) for c in layer.children())}


def graph_module(loaded: tx.LoadedModel, tasks: dict[str, nn.Module]
                  ) -> tuple[Any, set[str], dict[str, Any]]:
    """The module to trace: the first task's, with every non-switchable PET layer merged."""
    source = next(iter(tasks.values())) if tasks else loaded.model
    if not isinstance(source, nn.Module) or isinstance(source, torch.jit.ScriptModule):
        return source, set(), {}
    layers = pet.pet_layers(source)
    if not layers:
        return source, set(), {}
    switchable = _packed_layers(source) | _varying_layers(tasks, layers)
    module, _ = copy_sharing_base(source)
    module.eval()
    merged, kept = [], []
    for name, layer in pet.pet_layers(module).items():
        if name in switchable:
            continue
        if layer.merged or layer.is_mergeable():
            own_tensor(module, f"{name}.base.weight")  # merging writes it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pet.merge(layer)
            merged.append(name)
        else:
            kept.append(name)
    pet.unload(module)
    _freeze_packed(module)
    info = {"merged": merged, "kept_unmerged": kept, "switchable": sorted(switchable),
            "tasks": list(tasks)}
    return module, switchable, info


class _ConstantMatrix(nn.Module):
    """Stands in for a binarized matrix when tracing: its dequantized weight as a buffer.

    ``PackedMatrix`` unpacks its codes with numpy in ``forward``, which ``torch.export``
    cannot trace; the values are the same, so the graph and the value match are too.
    """

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(weight)))

    def forward(self) -> torch.Tensor:
        return self.weight


def _freeze_packed(module: nn.Module) -> None:
    """Replace adapter matrices that compute their weight (k-bit) with constant stand-ins."""
    kinds = (pet.PackedMatrix, pet.LowBitMatrix)
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, kinds)]
    for name, matrix in found:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if isinstance(matrix, pet.PackedMatrix):
            weight = matrix.dequantized()
        else:
            with torch.no_grad():
                weight = matrix().detach().float().numpy()
        setattr(parent, attr, _ConstantMatrix(weight))


def _varying_layers(tasks: dict[str, nn.Module], layers: Mapping[str, nn.Module]) -> set[str]:
    if len(tasks) < 2:
        return set()
    states = [m.state_dict() for m in tasks.values()]
    varying = set()
    for name in layers:
        prefix = name + "."
        for key, value in states[0].items():
            own = key.startswith(prefix) and not key.startswith(prefix + "base.")
            if own and any(key not in s or not torch.equal(s[key], value) for s in states[1:]):
                varying.add(name)
                break
    return varying


def _adapter_matrices(model: nn.Module, switchable: set[str]
                      ) -> dict[str, tuple[np.ndarray, QuantizedTensor | None]]:
    """``layer.attr`` -> (weight as the forward pass uses it, its exact codes if any)."""
    found: dict[str, tuple[np.ndarray, QuantizedTensor | None]] = {}
    for name in sorted(switchable):
        layer = model.get_submodule(name)
        for attr, child in layer.named_children():
            if attr == "base":
                continue
            if isinstance(child, pet.PackedMatrix):
                if child.bits == 1:
                    qt = child.quantized_tensor()
                    found[f"{name}.{attr}"] = (qt.dequantize(), qt)
                else:
                    found[f"{name}.{attr}"] = (child.dequantized(), None)
            elif callable(child) and any(p.ndim == 2 for p in child.parameters(recurse=False)):
                with torch.no_grad():
                    weight = child()
                if isinstance(weight, torch.Tensor) and weight.ndim == 2:
                    found[f"{name}.{attr}"] = (weight.detach().float().numpy(), None)
    return found


def known_weights(module: Any, switchable: set[str], policy: QuantPolicy,
                   quantize_fn: Callable[..., QuantizedTensor]) -> dict[str, KnownWeight]:
    if not switchable:
        return {}
    known = {}
    for key, (value, qt) in _adapter_matrices(module, switchable).items():
        if qt is None:
            qt = quantize_fn(value, policy.bits, policy.group_size, policy.symmetric,
                             **policy.codes_kwargs())
        known[digest(value)] = KnownWeight(key, qt, switchable=True)
    return known


@dataclass
class TaskAdapter:
    """One task's adapter: packed tensors by initializer name, and its LutMatMul weights."""

    parameters: dict[str, np.ndarray]
    quantized: dict[str, tuple[QuantizedTensor, np.ndarray | None]]


def task_adapters(result: RewriteResult, tasks: dict[str, nn.Module], switchable: set[str],
                   policy: QuantPolicy, quantize_fn: Callable[..., QuantizedTensor],
                   known: Mapping[str, KnownWeight]) -> dict[str, TaskAdapter]:
    """Task -> what its adapter file overrides (by initializer name).

    A matrix the rewrite quantized already (the first task's, found in ``known`` by
    value) reuses that :class:`QuantizedTensor`: it is neither quantized nor packed again.
    """
    from edgepet.exporters.onnx import lut_matmul_node

    records = [r for r in result.layers if r.switchable]
    if not records or not tasks:
        return {}
    first = next(iter(tasks.values()))
    bias_keys = {r.node: _bias_key(first, r, result) for r in records}
    _check_switchable(tasks, records, bias_keys)
    adapters: dict[str, TaskAdapter] = {}
    for task, model in tasks.items():
        matrices = _adapter_matrices(model, switchable)
        state = model.state_dict()
        adapter = TaskAdapter({}, {})
        for record in records:
            if record.name not in matrices:
                raise BadInputError(f"adapter {task!r} has no matrix {record.name}")
            value, qt = matrices[record.name]
            if qt is None:
                same = known.get(digest(value))
                qt = same.qt if same is not None else quantize_fn(
                    value, policy.bits, policy.group_size, policy.symmetric,
                    **policy.codes_kwargs())
            if qt.shape != (record.n, record.k):
                raise BadInputError(
                    f"adapter {task!r}: {record.name} is {qt.shape[0]}x{qt.shape[1]}, the "
                    f"first adapter's is {record.n}x{record.k} — all tasks must share shapes"
                )
            key = bias_keys[record.node]
            bias = result.quantized[record.node][1]
            if key is not None:
                bias = state[key].detach().float().numpy()
            _, inits = lut_matmul_node(qt, "a", "y", record.node, bias)
            for t in inits:
                if t.name in record.parameters or (key is not None and t.name.endswith(".bias")):
                    adapter.parameters[t.name] = numpy_helper.to_array(t)
            adapter.quantized[record.node] = (qt, bias)
        adapters[task] = adapter
    return adapters


def _check_switchable(tasks: dict[str, nn.Module], records: list[LayerRecord],
                      bias_keys: dict[str, str | None]) -> None:
    """Refuse tasks that differ in a tensor no adapter file can carry (it would be lost)."""
    states = [m.state_dict() for m in tasks.values()]
    covered_prefixes = tuple(f"{r.name}." for r in records)
    covered = {k for k in bias_keys.values() if k}
    lost = [
        key for key, value in states[0].items()
        if not key.startswith(covered_prefixes) and key not in covered
        and any(key not in s or not torch.equal(s[key], value) for s in states[1:])
    ]
    if lost:
        raise BadInputError(
            f"the tasks differ in {', '.join(lost[:4])}{' ...' if len(lost) > 4 else ''}, "
            "which an adapter file cannot switch (it carries adapter matrices and their "
            "biases) — train those parameters once for all tasks, or export each task as "
            "its own bundle"
        )


def _bias_key(model: nn.Module, record: LayerRecord, result: RewriteResult) -> str | None:
    """Name of the PyTorch parameter that is ``record``'s fused bias, when it is an adapter's."""
    bias = result.quantized[record.node][1]
    if bias is None:
        return None
    layer_name = record.name.rsplit(".", 1)[0]
    for key, value in model.state_dict().items():
        if (key.startswith(layer_name + ".") and not key.startswith(layer_name + ".base.")
                and value.ndim == 1 and value.shape[0] == bias.shape[0]
                and np.array_equal(value.detach().float().numpy(), bias)):
            return key
    return None


def write_adapters(stage: Path, task_adapters: dict[str, TaskAdapter]) -> list[dict]:
    entries = []
    if not task_adapters:
        return entries
    folder = stage / bundle_io.ADAPTER_DIR
    folder.mkdir()
    for task, task_adapter in task_adapters.items():
        values = task_adapter.parameters
        adapter = ort.AdapterFormat()
        adapter.set_adapter_version(1)
        adapter.set_model_version(1)
        adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                                for k, v in values.items()})
        file = folder / f"{task}{bundle_io.ADAPTER_SUFFIX}"
        adapter.export_adapter(str(file))
        entries.append({
            "name": task, "file": file.relative_to(stage).as_posix(),
            "parameters": sorted(values), "bytes": file.stat().st_size,
        })
    return entries


__all__ = ["TaskAdapter", "graph_module", "known_weights", "task_adapters", "task_models",
           "write_adapters"]
