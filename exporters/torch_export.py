"""PyTorch side of export: read a model file, find example inputs, write ONNX.

Every input kind the CLI accepts is read here, and every way reading can fail is
turned into a :class:`~edgepet.runtime.errors.BadInputError` that says what to do.
Unpickling runs code, so nothing is unpickled unless the caller trusts the file
(``trust``): pickled modules are refused, state dicts are read weights-only, and a
``.pt2`` archive is inspected before ``torch.export.load`` sees it (:func:`check_pt2`).
Running a model is code too: an untrusted ``.pt2`` or TorchScript graph may call only
torch operators that compute (no file access), checked before edgepet runs it, and a
TorchScript archive whose ``__setstate__`` would run while loading is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgepet.runtime.errors import BadInputError


@dataclass
class LoadedModel:
    """A model ready to export, and how it was obtained."""

    model: Any  # nn.Module, torch.jit.ScriptModule or torch.export.ExportedProgram
    kind: str
    source: str | None = None
    example_inputs: tuple[torch.Tensor, ...] | None = None
    #: Graph input/output names and dynamic axes when the loader knows them (Hugging Face
    #: encoders: input_ids, ..., with ``batch`` and ``sequence`` dynamic).
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    dynamic_shapes: tuple[dict[int, Any], ...] | None = None
    #: How the bundle takes text (an ``edgepet.exporters.hf.TextSpec``), for text models.
    text: Any = None

    def callable(self) -> Any:
        """Something to call with the inputs to get PyTorch's outputs."""
        if isinstance(self.model, torch.export.ExportedProgram):
            return self.model.module()
        return self.model


def from_module(model: nn.Module) -> LoadedModel:
    """Wrap an in-memory ``nn.Module`` (the Python API's usual input)."""
    if isinstance(model, torch.export.ExportedProgram):
        return LoadedModel(model, "exported-program", None, _ep_example_inputs(model))
    if isinstance(model, torch.jit.ScriptModule):
        return LoadedModel(model, "torchscript")
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"model is a {type(model).__name__}, not a torch.nn.Module — pass a module, a "
            "torch.export program, or a path to a model file"
        )
    return LoadedModel(model, "module")


def load_model(
    path: str | os.PathLike[str],
    trust: bool = False,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Read a model file of any supported kind.

    Args:
        path: a TorchScript file, a ``torch.export`` program (``.pt2``), a pickled
            ``nn.Module`` (only with ``trust``) or a state dict (``.pt``/``.pth``/
            ``.safetensors``; needs ``arch``).
        trust: allow unpickling arbitrary Python objects (runs code from the file).
        arch: ``package.module:Class`` that builds the model a state dict belongs to.
        arch_kwargs: keyword arguments for that class.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"model file {path} does not exist — check the path")
    if path.suffix == ".safetensors":
        return _state_dict_model(_read_safetensors(path), path, arch, arch_kwargs)
    names = _zip_names(path)
    if names is not None and any(n.endswith("/archive_format") for n in names):
        return _load_exported_program(path, trust)
    if names is not None and any("/code/" in n for n in names) and any(
        n.endswith("/constants.pkl") for n in names
    ):
        return _load_torchscript(path, trust)
    return _load_pickle(path, trust, arch, arch_kwargs)


def _zip_names(path: Path) -> list[str] | None:
    """Entry names when ``path`` is a zip archive (all modern PyTorch formats are)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise BadInputError(
            f"{path} is a damaged archive ({error}) — the file is probably truncated; "
            "copy or save it again"
        ) from None


def _unreadable(path: Path, what: str, error: Exception) -> BadInputError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return BadInputError(
        f"{path} could not be read as {what}: {first_line[:300]} — the file is truncated, "
        "damaged or not a PyTorch model; save it again with torch.jit.save, "
        "torch.export.save or torch.save(model.state_dict())"
    )


def _load_exported_program(path: Path, trust: bool = False) -> LoadedModel:
    if not trust:
        check_pt2(path)
    missing = _register_pytree_types(path)
    try:
        with _quiet():
            program = torch.export.load(str(path))
    except Exception as error:  # noqa: BLE001 — any failure to read is the file's fault
        if missing:
            raise BadInputError(
                f"{path} returns {missing[0]}, a type torch's pytree must know before the "
                "program can be read; its package is not installed here — pip install "
                f"{missing[0].split('.')[0]} (edgepet imports it to read the file), save a "
                "wrapper that returns tensors, or for a Hugging Face model export its folder "
                "(edgepet export FOLDER; docs/real_models.md)") from None
        raise _unreadable(path, "a torch.export program", error) from None
    if not trust:
        _check_graph_calls(program, path)
    return LoadedModel(program, "exported-program", str(path), _ep_example_inputs(program))


def _register_pytree_types(path: Path) -> list[str]:
    """Import the modules that define the output dataclasses a ``.pt2`` program names
    (``transformers.modeling_outputs.BaseModelOutput...``): ``transformers`` registers them
    with torch's pytree when they are defined, and ``torch.export.load`` fails without.
    Only modules of the installed ``transformers`` package are imported (from the names in
    the archive's JSON, nothing from the file runs). Returns the names left unregistered."""
    with zipfile.ZipFile(path) as archive:
        text = " ".join(archive.read(n).decode("utf-8", "replace") for n in archive.namelist()
                        if n.endswith(".json") and "/models/" in n)
    names = sorted(set(re.findall(r"transformers\.[A-Za-z0-9_.]*Output[A-Za-z0-9_]*", text)))
    missing = []
    for name in names:
        module = name.rpartition(".")[0]
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(name)
    return missing


# --- .pt2 archives without unpickling -----------------------------------------------------
#
# torch.export.load unpickles with weights_only=False wherever the archive says so: weights
# and constants marked use_pickle, custom and opaque objects, legacy .pt parts, and (as a
# fallback when the weights-only load fails) the sample inputs; it also loads AOTInductor
# shared libraries. check_pt2 lets through only archives whose every part is JSON, raw
# tensor bytes, or a pickle that torch.load(weights_only=True) reads — verified here first,
# so that torch's own fallback never runs.

_PT2_PLAIN = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|extra/.+)")
_PT2_CONFIG = re.compile(r"data/(weights|constants)/[^/]+_(weights|constants)_config\.json")
_PT2_SAMPLE_INPUTS = re.compile(r"data/sample_inputs/[^/]+\.pt")


def check_pt2(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would unpickle code from.

    Raises :class:`BadInputError` naming the part and pointing at ``--trust``. Loads
    nothing but JSON, and the sample inputs with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
        # One root folder and no name twice: otherwise torch's zip reader and Python's could
        # see different parts under the same name, and this check would vouch for the wrong one.
        if len({n.split("/", 1)[0] for n in names}) != 1 or len(set(names)) != len(names) \
                or any("/" not in n for n in names):
            raise _needs_trust(path, "(the archive's layout)", "several root folders, or a "
                               "part named twice")
        entries = {_pt2_record(name): name for name in names}
        configs = {rec: _pt2_config(archive, name, path) for rec, name in entries.items()
                   if _PT2_CONFIG.fullmatch(rec)}
        raw = {f"{rec.rsplit('/', 1)[0]}/{meta['path_name']}"
               for rec, config in configs.items() for meta in config.values()
               if _plain_payload(rec.split("/")[1], meta)}
        for record, name in sorted(entries.items()):
            if _PT2_PLAIN.fullmatch(record) or record in configs or record in raw:
                continue
            if _PT2_SAMPLE_INPUTS.fullmatch(record):
                _weights_only(archive.read(name), path, record)
                continue
            raise _needs_trust(path, record)


def _pt2_record(name: str) -> str:
    """An entry's name inside the archive's root folder (``archive/models/x.json`` ->
    ``models/x.json``)."""
    return name.split("/", 1)[1] if "/" in name else name


def _pt2_config(archive: zipfile.ZipFile, name: str, path: Path) -> dict[str, dict]:
    try:
        config = json.loads(archive.read(name))["config"]
    except (ValueError, KeyError, TypeError):
        raise BadInputError(f"{path}: {name} is not a torch.export payload table — the file "
                            "is damaged; save it again with torch.export.save") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise BadInputError(f"{path}: {name} is not a torch.export payload table — the file "
                            "is damaged; save it again with torch.export.save")
    return config


def _plain_payload(kind: str, meta: dict[str, Any]) -> bool:
    """A weight or constant stored as raw tensor bytes (read without unpickling)."""
    name = meta.get("path_name")
    prefix = "weight_" if kind == "weights" else "tensor_"
    return (meta.get("use_pickle") is False and isinstance(name, str)
            and name.startswith(prefix) and "/" not in name)


def _weights_only(data: bytes, path: Path, record: str) -> None:
    try:
        with _quiet():
            # The very call torch.export.load makes first: when it succeeds here, torch's
            # fallback to weights_only=False is never reached.
            torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001 — the weights-only unpickler refused it
        raise _needs_trust(path, record, _first_line(error)) from None


def _needs_trust(path: Path, record: str, why: str | None = None) -> BadInputError:
    detail = f" ({why})" if why else ""
    return BadInputError(
        f"{path}: its part {record} is not plain tensor data{detail}; torch.export.load "
        "would unpickle it (or load native code), which runs code from the file — pass "
        "--trust (trust=True) only if you trust its source, or save the program again "
        "with torch.export.save from plain tensors"
    )


#: Python functions a graph may call besides torch operators (what torch.export emits for
#: shape arithmetic and tuple access).
_PLAIN_CALLS = frozenset({
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
    "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert",
    "lshift", "rshift", "sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite",
    "sym_sqrt", "sym_sum", "_sym_sqrt", "ceil", "floor", "trunc", "sqrt", "log", "exp",
})


def _check_graph_calls(program: Any, path: Path) -> None:
    """Every call in an untrusted program is a torch operator or plain arithmetic.

    A graph node may name any attribute of ``torch``, ``operator`` or ``math``; running
    the program (edgepet does, for reference outputs) must not call, say,
    ``operator.attrgetter`` or a loader.
    """
    from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, (OpOverload, OpOverloadPacket)):
                op = (target.name() if isinstance(target, OpOverload)
                      else target._qualified_op_name)
                if op in _FILE_OPS:
                    raise BadInputError(
                        f"{path}: its graph calls {op} (node {node.name!r}), "
                        "which reaches the file system; pass --trust (trust=True) only if "
                        "you trust its source")
                continue
            if isinstance(target, HigherOrderOperator):
                continue
            if (getattr(target, "__module__", None) in ("_operator", "operator", "math",
                                                        "torch", "torch.fx.experimental"
                                                        ".sym_node")
                    and getattr(target, "__name__", None) in _PLAIN_CALLS):
                continue
            name = getattr(target, "__name__", None) or repr(target)
            raise BadInputError(
                f"{path}: its graph calls {name!r} (node {node.name!r}), which is not a "
                "torch operator — running it could run code; pass --trust (trust=True) "
                "only if you trust its source"
            )


def _ep_example_inputs(program: torch.export.ExportedProgram) -> tuple | None:
    example = getattr(program, "example_inputs", None)
    if not example:
        return None
    args, kwargs = example
    if kwargs:
        return None
    return tuple(args)


#: Operators that reach the file system: a TorchScript or ``.pt2`` graph may name them
#: like any other operator (``torch.save`` scripts to ``aten::save``).
_FILE_OPS = frozenset({"aten::save", "aten::from_file"})
#: TorchScript namespaces whose operators compute (``prim``: constants, control flow,
#: tuples and lists); any other (``debugprims::load_tensor``, ``profiler::``, custom ops
#: from a library) is refused without trust.
_TORCHSCRIPT_NAMESPACES = ("aten", "prim")


def _load_torchscript(path: Path, trust: bool = False) -> LoadedModel:
    if not trust:
        check_torchscript_archive(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, "TorchScript", error) from None
    if not trust:
        _check_torchscript_calls(module, path)
    return LoadedModel(module.eval(), "torchscript", str(path))


def check_torchscript_archive(path: Path) -> None:
    """Refuse a TorchScript archive whose code would run while it loads.

    ``torch.jit.load`` runs every ``__setstate__`` the archive's code defines, before
    anything can inspect it; its graphs are checked after loading
    (:func:`_check_torchscript_calls`), so a ``__setstate__`` is the one way code runs
    unchecked. Raises :class:`BadInputError` pointing at ``--trust``.
    """
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/code/" not in name or not name.endswith(".py"):
                continue
            text = archive.read(name).decode("utf-8", "replace")
            if re.search(r"\bdef\s+__setstate__\s*\(", text):
                raise BadInputError(
                    f"{path}: its TorchScript code defines __setstate__ ({name}), which "
                    "torch.jit.load runs while loading — edgepet cannot check it first; "
                    "pass --trust (trust=True) only if you trust its source")


def _check_torchscript_calls(module: Any, path: Path) -> None:
    """Every operator ``forward`` reaches (submodules and functions inlined) computes:
    ``aten`` or ``prim``, and none of :data:`_FILE_OPS`."""
    try:
        graph = module.inlined_graph
    except Exception as error:  # noqa: BLE001 — a module without forward
        raise _unreadable(path, "TorchScript with a forward method", error) from None

    def nodes(block: Any):
        for node in block.nodes():
            yield node
            for inner in node.blocks():
                yield from nodes(inner)

    for node in nodes(graph):
        kind = node.kind()
        namespace = kind.split("::", 1)[0]
        if (namespace in _TORCHSCRIPT_NAMESPACES and kind not in _FILE_OPS
                and kind not in ("prim::CallMethod", "prim::CallFunction")):
            continue
        why = ("reaches the file system" if kind in _FILE_OPS
               else "is a call edgepet cannot look into" if namespace == "prim"
               else "is not a torch operator")
        raise BadInputError(
            f"{path}: its TorchScript calls {kind}, which {why} — running it could read "
            "or write files or run code; pass --trust (trust=True) only if you trust its "
            "source")


def _load_pickle(
    path: Path, trust: bool, arch: str | None, arch_kwargs: dict[str, Any] | None
) -> LoadedModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        if not _needs_code(error):
            raise _unreadable(path, "a PyTorch file", error) from None
        if not trust:
            raise BadInputError(
                f"{path} is a pickled Python object, and unpickling it runs code from the "
                "file — pass --trust (trust=True) only if you trust its source, or save the "
                "model as TorchScript (torch.jit.save), a torch.export program (.pt2) or a "
                "state dict with --arch"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as error2:  # noqa: BLE001
            raise _unreadable(path, "a pickled module", error2) from None
        if not isinstance(obj, nn.Module):
            raise BadInputError(
                f"{path} holds a {type(obj).__name__}, not a torch.nn.Module — save the "
                "model itself, or its state_dict and pass --arch"
            ) from None
        return LoadedModel(obj.eval(), "pickle", str(path))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # the usual training-checkpoint wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(
            f"{path} holds a {type(obj).__name__} that is neither a model nor a state dict "
            "of tensors — save the model with torch.jit.save or torch.export.save"
        )
    return _state_dict_model(obj, path, arch, arch_kwargs)


def _needs_code(error: Exception) -> bool:
    """True when torch.load(weights_only=True) refused a pickle that references code."""
    return "Unsupported global" in str(error) or "Unsupported operand" in str(error)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise BadInputError(
            "reading .safetensors needs the safetensors package — pip install 'edgepet[torch]'"
        ) from None
    try:
        return load_file(str(path))
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, "safetensors", error) from None


def build_arch(arch: str, arch_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate ``package.module:Class`` with ``arch_kwargs``."""
    module_name, _, class_name = arch.partition(":")
    if not module_name or not class_name:
        raise BadInputError(
            f"--arch {arch!r} is not of the form package.module:Class — e.g. "
            "edgepet.exporters.examples:TinyMLP"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BadInputError(
            f"--arch {arch!r}: module {module_name!r} cannot be imported ({error}) — make "
            "sure it is installed or on PYTHONPATH"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BadInputError(f"--arch {arch!r}: {module_name} has no attribute {class_name!r}")
    try:
        model = cls(**(arch_kwargs or {}))
    except TypeError as error:
        raise BadInputError(f"--arch {arch!r} with --arch-kwargs {arch_kwargs}: {error}") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"--arch {arch!r} built a {type(model).__name__}, not an nn.Module")
    return model


def _state_dict_model(
    state: dict[str, torch.Tensor], path: Path, arch: str | None, arch_kwargs: dict | None
) -> LoadedModel:
    if arch is None:
        raise BadInputError(
            f"{path} is a state dict (weights without the model's code) — pass --arch "
            "package.module:Class (and --arch-kwargs JSON if its constructor needs "
            "arguments) so edgepet can build the model"
        )
    model = build_arch(arch, arch_kwargs)
    load_state(model, state, f"{path} into {arch}")
    return LoadedModel(model.eval(), "state-dict", str(path))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], what: str,
               strict: bool = True) -> None:
    """``model.load_state_dict(state)`` with a message that lists what did not fit."""
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:600]
        raise BadInputError(f"loading {what} failed: {detail} — check --arch/--arch-kwargs "
                            "or the file") from None
    if not strict and result.unexpected_keys:
        raise BadInputError(
            f"loading {what}: keys {result.unexpected_keys[:5]} match no parameter of the "
            "model — is this state meant for this model?"
        )


# --- example inputs ---------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
}


def parse_input_shape(text: str) -> tuple[torch.dtype, tuple[int, ...]]:
    """Parse ``[DTYPE:]D0,D1,...`` (e.g. ``1,3,32,32`` or ``int64:1,16``)."""
    dtype_name, _, dims = text.rpartition(":")
    dtype = _DTYPES.get(dtype_name or "float32")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if dtype is None or not shape or any(d <= 0 for d in shape):
        raise BadInputError(
            f"--input-shape {text!r} is not [DTYPE:]D0,D1,... with positive sizes — e.g. "
            f"1,3,32,32 or int64:1,16 (dtypes: {', '.join(_DTYPES)})"
        )
    return dtype, shape


def example_inputs(
    loaded: LoadedModel,
    input_shapes: Sequence[str] | None = None,
    inputs: Sequence[np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Inputs to trace and to compute reference outputs with.

    In order of preference: given arrays, given shapes (random values), the model's own
    ``example_inputs()``, a ``.pt2`` program's stored inputs, then a guess from the first
    layer (``Linear`` -> float ``[1, in_features]``, ``Embedding`` -> token ids ``[1, 16]``).
    """
    if inputs:
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)
    if input_shapes:
        gen = torch.Generator().manual_seed(seed)
        vocab = _vocab_size(loaded.model)
        tensors = []
        for text in input_shapes:
            dtype, shape = parse_input_shape(text)
            if dtype.is_floating_point:
                tensors.append(torch.randn(shape, generator=gen, dtype=dtype))
            else:
                tensors.append(torch.randint(0, vocab or 2, shape, generator=gen, dtype=dtype))
        return tuple(tensors)
    own = getattr(loaded.model, "example_inputs", None)
    if callable(own) and not isinstance(loaded.model, torch.jit.ScriptModule):
        result = own()
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)
    if loaded.example_inputs:
        return tuple(loaded.example_inputs)
    text = _text_inputs(loaded.model)
    if text is not None:
        return text
    guess = _guess_inputs(loaded.model)
    if guess is None:
        raise BadInputError(
            "edgepet cannot tell what input this model takes — pass --input-shape "
            "(e.g. --input-shape 1,3,224,224 or --input-shape int64:1,32), or give the "
            "model an example_inputs() method"
        )
    return guess


_TEXT_ARGUMENTS = ("input_ids", "attention_mask", "token_type_ids")


def _text_inputs(model: Any) -> tuple[torch.Tensor, ...] | None:
    """Token ids, an attention mask (with some padding) and segment ids for a TorchScript
    text encoder whose forward takes exactly such arguments (a traced Hugging Face model)."""
    names = _script_arguments(model) if isinstance(model, torch.jit.ScriptModule) else []
    if not names or names[0] != "input_ids" or not set(names) <= set(_TEXT_ARGUMENTS):
        return None
    gen = torch.Generator().manual_seed(0)
    vocab = _vocab_size(model) or 1000
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 16), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[n] for n in names)


def _leaf_modules(model: Any) -> list[tuple[str, Any]]:
    if not hasattr(model, "named_modules"):
        return []
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _type_name(module: Any) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _vocab_size(model: Any) -> int | None:
    for _, module in _leaf_modules(model):
        if _type_name(module) == "Embedding":
            return int(module.weight.shape[0])
    return None


def _guess_inputs(model: Any) -> tuple[torch.Tensor, ...] | None:
    leaves = _leaf_modules(model)
    for _, module in leaves:
        kind = _type_name(module)
        weight = getattr(module, "weight", None)
        if kind == "Embedding" and weight is not None:
            gen = torch.Generator().manual_seed(0)
            return (torch.randint(0, int(weight.shape[0]), (1, 16), generator=gen),)
        if kind == "Linear" and weight is not None:
            gen = torch.Generator().manual_seed(0)
            return (torch.randn(1, int(weight.shape[1]), generator=gen),)
        if weight is not None:
            return None  # a first layer whose input shape cannot be read off
    return None


# --- running and exporting --------------------------------------------------------------


def torch_outputs(fn: Any, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run ``fn(*inputs)`` in float32 without gradients; outputs as numpy arrays."""
    with torch.no_grad():
        try:
            out = fn(*inputs)
        except Exception as error:  # noqa: BLE001 — the model rejected the example input
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
            raise BadInputError(
                f"the model cannot run on the example input ({shapes}): "
                f"{_first_line(error)} — pass --input-shape with the shape it expects"
            ) from None
    return [t.detach().float().cpu().numpy() for t in _flatten(out)]


def output_names(fn: Any, inputs: Sequence[torch.Tensor]) -> list[str] | None:
    """The field names of a model output that is a dict or dataclass of tensors (e.g.
    ``last_hidden_state``, ``pooler_output``); None for other outputs."""
    with torch.no_grad(), contextlib.suppress(Exception):
        out = fn(*inputs)
        if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor)
                                                 for v in out.values()):
            names = [str(k) for k in out]
            if all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names):
                return names
    return None


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    raise BadInputError(
        f"the model returned a {type(out).__name__}; edgepet exports models that return "
        "tensors (or tuples/lists/dicts of tensors)"
    )


def _first_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(error).__name__


def _script_arguments(model: Any) -> list[str]:
    """Argument names of a ScriptModule's forward (without self); [] when unknown."""
    with contextlib.suppress(Exception):
        return [a.name for a in model.forward.schema.arguments[1:]]
    return []


def _input_names(loaded: LoadedModel, count: int) -> list[str]:
    fn = loaded.model.forward if isinstance(loaded.model, nn.Module) else None
    names: list[str] = []
    if isinstance(loaded.model, torch.jit.ScriptModule):
        names = _script_arguments(loaded.model)
    if fn is not None and not isinstance(loaded.model, torch.jit.ScriptModule):
        with contextlib.suppress(TypeError, ValueError):
            params = inspect.signature(fn).parameters.values()
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                         p.POSITIONAL_OR_KEYWORD)]
    if len(names) < count:
        names = [f"input_{i}" if count > 1 else "input" for i in range(count)]
    return names[:count]


@contextlib.contextmanager
def _quiet():
    """Silence torch.onnx's progress prints and warnings; edgepet reports its own steps."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def to_onnx(loaded: LoadedModel, inputs: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """Export to ONNX with a dynamic leading (batch) dimension where the model allows.

    ``nn.Module`` and ``.pt2`` go through the dynamo exporter; TorchScript through the
    TorchScript exporter (torch.export cannot trace ScriptModules), with the example's
    shapes fixed. A module that the dynamo exporter cannot trace gets a second try with
    the TorchScript exporter. Outputs are called ``output`` (``output_0``, ... when there
    are several) and the batch dimension ``batch``, whichever exporter ran.
    """
    model = _export_graph(loaded, tuple(inputs))
    _rename_outputs(model, loaded.output_names)
    _name_batch_dim(model)
    return model


def _export_graph(loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    if loaded.kind == "exported-program":
        with _quiet():
            return _checked(torch.onnx.export(loaded.model, dynamo=True, verbose=False)
                            .model_proto)
    if loaded.kind == "torchscript":
        return _legacy_export(loaded, inputs)
    names = loaded.input_names or _input_names(loaded, len(inputs))
    dynamic: Any = {name: {0: torch.export.Dim.AUTO} for name in names}
    if loaded.dynamic_shapes is not None:
        dynamic = loaded.dynamic_shapes
    try:
        with _quiet():
            program = torch.onnx.export(
                loaded.model, inputs, dynamo=True, verbose=False,
                input_names=names, dynamic_shapes=dynamic,
            )
        return _checked(program.model_proto)
    except Exception as dynamo_error:  # noqa: BLE001 — fall back, then report both
        try:
            return _legacy_export(loaded, inputs)
        except BadInputError as legacy_error:
            raise BadInputError(
                f"torch could not export the model to ONNX: {_first_line(dynamo_error)} "
                f"(TorchScript exporter: {legacy_error}) — the model must be traceable by "
                "torch.export; see docs/export.md"
            ) from None


def _rename_outputs(model: onnx.ModelProto, names: Sequence[str] | None = None) -> None:
    """Name graph outputs ``names`` (default ``output``, or ``output_0``, ...) instead of
    exporter temporaries."""
    outputs = list(model.graph.output)
    if names is None or len(names) != len(outputs):
        names = ["output" if len(outputs) == 1 else f"output_{i}" for i in range(len(outputs))]
    renames = {o.name: names[i] for i, o in enumerate(outputs)}
    inputs = {i.name for i in model.graph.input}
    if any(old in inputs for old in renames) or len(set(renames)) != len(outputs):
        return
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for o in model.graph.output:
        o.name = renames[o.name]


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the exporter's symbol for the leading input dimension ``batch`` everywhere."""
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input
               if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    if len(symbols) != 1:
        return
    (old,) = symbols
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = "batch"


def _legacy_export(loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    if isinstance(loaded.model, torch.jit.ScriptModule):
        returns = ""
        with contextlib.suppress(Exception):
            returns = str(loaded.model.forward.schema.returns[0].type)
        if returns.startswith("Dict"):
            raise BadInputError(
                f"this TorchScript model returns a dict ({returns}), which torch's ONNX "
                "exporter cannot write — a Hugging Face model traced with strict=False does; "
                "set model.config.return_dict = False before tracing (older transformers: "
                "from_pretrained(DIR, torchscript=True)) so it returns tuples, or better, "
                "give edgepet the folder itself: edgepet export DIR "
                "(inputs keep their names, batch and sequence stay dynamic)")
    names = _input_names(loaded, len(inputs))
    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(
                loaded.model, inputs, buffer, dynamo=False, opset_version=17,
                input_names=names, dynamic_axes={name: {0: "batch"} for name in names},
            )
    except Exception as error:  # noqa: BLE001
        raise BadInputError(_first_line(error)) from None
    return _checked(onnx.load_from_string(buffer.getvalue()))


def _checked(model: onnx.ModelProto | None) -> onnx.ModelProto:
    if model is None:
        raise BadInputError("torch.onnx.export produced no model")
    return model


def named_matrices(model: Any) -> dict[str, torch.Tensor]:
    """Every 2-D float parameter and buffer of a module, by name (for naming layers)."""
    if isinstance(model, torch.export.ExportedProgram):
        tensors = dict(model.state_dict)
        tensors.update({k: v for k, v in model.constants.items() if isinstance(v, torch.Tensor)})
    elif hasattr(model, "state_dict"):
        tensors = dict(model.state_dict(keep_vars=False))
    else:
        return {}
    # Embedding tables are gathered from, never multiplied: a head tied to one takes
    # the head's name.
    tables = {f"{n}.weight" for n, m in _leaf_modules(model) if _type_name(m) == "Embedding"}
    return {
        name: t for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.ndim == 2 and t.is_floating_point()
        and name not in tables
    }


def linear_layers(model: Any) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules by the name of their weight (``encoder.layer.0.query``)."""
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def linear_inputs(model: Any, inputs: Sequence[torch.Tensor], max_rows: int = 2048,
                  mask: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The rows each ``nn.Linear`` of ``model`` sees on ``inputs`` (activation-aware
    quantization weighs weight error by them). ``mask`` (``[batch, sequence]``, e.g. the
    attention mask) drops padding positions from token-wise inputs."""
    layers = linear_layers(model)
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach()
            if mask is not None and x.shape[:2] == mask.shape:
                x = x[mask.bool()]
            seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).float())
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    result = {}
    for name, rows in seen.items():
        x = torch.cat(rows)
        if x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
        result[name] = x.cpu().numpy()
    return result


def layer_errors(model: Any, inputs: Sequence[torch.Tensor], reference: list[np.ndarray],
                 weights: dict[str, dict[Any, np.ndarray]], metric: str) -> dict[str, dict]:
    """Output error added by each ``weights[layer][option]`` (a float ``[N, K]`` stand-in
    for the layer's weight) alone, the rest of ``model`` in float.

    ``metric``: "embedding" (1 - mean cosine of the first output's rows) or anything else
    (relative L2 over all outputs).
    """
    layers = linear_layers(model)
    errors: dict[str, dict] = {}
    for name, options in weights.items():
        module = layers[name]
        original = module.weight.data
        errors[name] = {}
        try:
            for option, w in options.items():
                module.weight.data = torch.from_numpy(np.ascontiguousarray(w, np.float32))
                errors[name][option] = _output_error(torch_outputs(model, inputs), reference,
                                                     metric)
        finally:
            module.weight.data = original
    return errors


def _output_error(y: list[np.ndarray], ref: list[np.ndarray], metric: str) -> float:
    if metric == "embedding":
        a = y[0].reshape(-1, y[0].shape[-1]).astype(np.float64)
        b = ref[0].reshape(-1, ref[0].shape[-1]).astype(np.float64)
        cos = np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1)
                                              * np.linalg.norm(b, axis=-1), 1e-12)
        return float(1.0 - np.mean(cos))
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(y, ref,
                                                                             strict=True))
    den = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in ref)
    return float(np.sqrt(num / max(den, 1e-30)))


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """``--arch-kwargs`` as a dict (JSON object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInputError(f"--arch-kwargs is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadInputError("--arch-kwargs must be a JSON object, e.g. '{\"dim\": 64}'")
    return value


__all__ = [
    "LoadedModel",
    "build_arch",
    "example_inputs",
    "from_module",
    "layer_errors",
    "linear_inputs",
    "linear_layers",
    "load_model",
    "load_state",
    "named_matrices",
    "output_names",
    "parse_arch_kwargs",
    "parse_input_shape",
    "to_onnx",
    "torch_outputs",
]
