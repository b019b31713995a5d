"""``edgepet.export``: a tuned PyTorch model in, a checked bundle folder out.

Steps: load the model (any input kind) -> gather task adapters -> merge what merges ->
export to ONNX -> rewrite constant-weight MatMul/Gemm into LutMatMul (quantizing the
base weights, keeping frozen 1-bit adapter codes exactly) -> turn each task's adapter
parameters into an ONNX Runtime adapter file -> write reference data -> write the bundle
into a staging folder, run its reference data through the op library, and only then move
it into place. A failure at any step leaves no partial output.

Which PET layers stay switchable: those holding binarized (packed) matrices, and those
whose weights differ between the tasks given. Every other PET layer is merged into its
base weight (or, if its math cannot merge, exported as it is).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgepet.exporters import adapters as adapters_io
from edgepet.exporters import bundle as bundle_writer
from edgepet.exporters import torch_export as tx
from edgepet.exporters.fuse import fuse_shared_inputs
from edgepet.exporters.manifest import build_manifest, initializer_bytes, write_manifest
from edgepet.exporters.rewrite import (
    KnownWeight,
    QuantPolicy,
    RewriteResult,
    dequantized_twin,
    digest,
    make_overridable,
    rewrite_linears,
)
from edgepet.quant import QuantizedTensor, quantize
from edgepet.quant.tensor import SUPPORTED_BITS, Bits
from edgepet.runtime import bundle as bundle_io
from edgepet.runtime.errors import BadInputError
from edgepet.targets import TargetProfile, get_target, host_target

#: Relative output error (||y - y_torch|| / ||y_torch||) the bundle may show against fp32
#: PyTorch, per weight width. Measured on the example models (TinyMLP/ViT/Llama with
#: N(0, 1/fan_in) weights, round-to-nearest, group 64) with headroom; it is mostly
#: quantization error, which grows with depth — real models need their own budget.
TOLERANCE_VS_PYTORCH: dict[Bits, float] = {4: 0.35, 3: 0.6, 2: 1.6, "ternary": 1.3, 1: 1.6}
#: Against the same graph with the dequantized weights in float, only the kernels' int8
#: activation tables differ (about 0.3 % per layer, see docs/operator.md).
TOLERANCE_VS_QUANTIZED = 0.05
#: Embeddings (sentence-embedding outputs): the least mean cosine to fp32 PyTorch per
#: width. A retrieval index built with fp32 vectors still finds the right neighbours above
#: about 0.95; below 0.8 it does not (2-bit MiniLM at 0.53 finds 55 % of them).
MIN_EMBEDDING_COSINE: dict[Bits, float] = {4: 0.95, 3: 0.9, 2: 0.8, "ternary": 0.8, 1: 0.7}
#: Logits (text classification, >= 16 reference samples): the least top-1 agreement.
MIN_TOP1_AGREEMENT: dict[Bits, float] = {4: 0.9, 3: 0.85, 2: 0.7, "ternary": 0.7, 1: 0.6}
#: Models whose serialized size exceeds this keep their weights in model.onnx.data.
EXTERNAL_DATA_THRESHOLD = 64 << 20
DEFAULT_EXAMPLE = "llama"


class InaccurateBundleError(BadInputError):
    """The exported bundle misses its accuracy tolerance (nothing was written)."""

Progress = Callable[[str], None]


def export(
    model: Any = None,
    out: str | os.PathLike[str] = "edgepet-bundle",
    *,
    target: str | TargetProfile | None = None,
    bits: Bits | None = None,
    group_size: int | str | None = None,
    symmetric: bool | None = None,
    keep: Sequence[str] = (),
    quantizer: str = "auto",
    adapters: Mapping[str, Any] | None = None,
    input_shapes: Sequence[str] | None = None,
    inputs: Sequence[np.ndarray] | None = None,
    trust: bool = False,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    op_library: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    task: str | None = None,
    tokenizer: Any = None,
    calibration: str | os.PathLike[str] | Sequence[str] | None = None,
    allow_inaccurate: bool = False,
) -> bundle_io.Bundle:
    """Export a (tuned) PyTorch model into a bundle folder ``out``; return it, checked.

    Args:
        model: an ``nn.Module``, a ``torch.export`` program, a path to a model file
            (TorchScript, ``.pt2``, pickled module with ``trust``, state dict with
            ``arch``), ``"example:NAME"`` (mlp, vit, llama) or None for the default example.
        out: the bundle folder to write (must not hold a bundle unless ``overwrite``).
        target: a target profile name (``edgepet targets``); default: this machine's.
        bits: 1, 2, 3, 4 or "ternary" (default: the target's).
        group_size: inputs per scale along K (multiple of 32, or "per-row"; default:
            the target's).
        symmetric: symmetric codes (False: a zero point per group; default True, for
            decoder checkpoints False).
        keep: fnmatch patterns of layer names to leave in float (e.g. ``lm_head``).
        quantizer: "rtn" (round to nearest), "search" (error-minimizing clip and scale
            per group; about half the output error at 2 bits) or "auto" (search).
        adapters: task name -> a tuned ``nn.Module`` of the same structure, a state dict
            (dict or file) to load onto a copy of ``model``, or a Hugging Face PEFT folder.
            One task merges into the model; several stay switchable adapters.
        input_shapes: ``[DTYPE:]D0,D1,...`` per model input, when it cannot be inferred.
        inputs: example (and reference) input arrays instead of shapes.
        trust: allow unpickling a pickled ``nn.Module`` file (runs code from it).
        arch, arch_kwargs: ``package.module:Class`` and its kwargs for a state dict.
        overwrite: replace an existing bundle at ``out``.
        external_data_threshold: bytes above which weights go to ``model.onnx.data``.
        op_library: an op library built for the target (e.g. cross-compiled for aarch64)
            to ship in ``lib/``; devices of that architecture run with it.
        progress: called with a line per step (the CLI prints them).
        task: for Hugging Face encoders (a folder, or a ``transformers`` model):
            "feature-extraction", "sentence-embedding" (pooling and L2 normalization in
            the graph) or "text-classification" (default: read off the folder/model).
        tokenizer: a fast tokenizer (or its folder) for a ``transformers`` model object
            whose own folder has none; it travels in the bundle.
        calibration: real reference inputs: a text file (one input per line) or a list of
            strings for text models, or an ``.npz`` of arrays by input name.
        allow_inaccurate: write the bundle even when it misses its accuracy tolerance
            (otherwise :class:`InaccurateBundleError` and nothing is written).
    """
    from edgepet.exporters.llm.checkpoint import is_llm_source

    if is_llm_source(model):  # a GGUF file or Hugging Face folder of a Llama-family decoder
        from edgepet.exporters.llm.export import export_decoder

        if adapters or input_shapes or inputs is not None or arch or op_library:
            raise BadInputError("decoder checkpoints (GGUF / Hugging Face folder) take no "
                                "--adapter, --input-shape, --input, --arch or --op-library yet")
        return export_decoder(model, out, target=target, bits=bits, group_size=group_size,
                              symmetric=symmetric, keep=keep, quantizer=quantizer,
                              overwrite=overwrite, progress=progress)
    say = _Steps(progress)
    profile = target if isinstance(target, TargetProfile) else (
        get_target(target) if target else host_target())
    policy = _policy(profile, bits, group_size, symmetric, keep)
    quantizer, quantize_fn = _quantizer(quantizer)
    library = _check_op_library(op_library, profile)
    out = Path(out)
    with bundle_writer.staged_output(out, overwrite) as stage:
        say("loading the model")
        loaded = _resolve_model(model, trust, arch, arch_kwargs, task, tokenizer)
        tasks = adapters_io.task_models(loaded, adapters)
        say("preparing adapters" if tasks else "preparing the model")
        graph_module, switchable, pet_info = adapters_io.graph_module(loaded, tasks)
        example, inputs_kind = _example(loaded, graph_module, input_shapes, inputs,
                                        calibration)
        references = _torch_references(loaded, tasks, example)
        say("exporting to ONNX with torch")
        float_model = tx.to_onnx(_as_loaded(loaded, graph_module), example)
        say(f"quantizing linear layers to {policy.bits} bits")
        first_task = next(iter(tasks.values())) if tasks else graph_module
        known = adapters_io.known_weights(first_task, switchable, policy, quantize_fn)
        names: dict[str, list[str]] = {}
        for name, value in tx.named_matrices(graph_module).items():
            names.setdefault(digest(value.detach().cpu().numpy()), []).append(name)
        float_bytes = initializer_bytes(float_model)
        result = fuse_shared_inputs(_rewrite(float_model, policy, names, known, quantize_fn, say))
        del float_model  # the rewrite made its own copy; the float weights can go
        say("writing adapters and reference data")
        task_adapters = adapters_io.task_adapters(result, tasks, switchable, policy, quantize_fn,
                                                    known)
        make_overridable(result.model, sorted(
            {n for a in task_adapters.values() for n in a.parameters}))
        files = _write_model(stage, result.model, external_data_threshold)
        files["library"] = _ship_op_library(stage, library)
        files["tokenizer"] = _write_tokenizer(stage, loaded.text)
        adapter_entries = adapters_io.write_adapters(stage, task_adapters)
        reference = _write_reference(stage, result, example, references, task_adapters)
        manifest = build_manifest(
            stage, loaded, profile, policy, quantizer, result, float_bytes, files,
            adapter_entries, reference, pet_info,
        )
        _describe_reference(manifest, loaded, policy, inputs_kind, example, files)
        say("verifying the bundle against PyTorch")
        # The manifest is complete but for the measurement; verify the staged files
        # through it in memory, then write it once.
        measured = bundle_io.Bundle(stage, manifest).verify()
        bad = [r for r in measured if r.vs_quantized > TOLERANCE_VS_QUANTIZED]
        if bad:
            raise RuntimeError(
                "the exported bundle disagrees with its own dequantized graph (relative "
                f"error {bad[0].vs_quantized:.4f} for adapter {bad[0].adapter}) — this is an "
                "edgepet bug; please report it with the model"
            )
        manifest["reference"]["measured"] = {
            (r.adapter or "default"): r.to_dict() for r in measured}
        for line in _describe_accuracy(measured):
            say(line)
        missed = [r for r in measured if not r.ok]
        if missed and not allow_inaccurate:
            raise InaccurateBundleError(_refusal(missed[0], policy))
        write_manifest(stage, manifest)
    say.finish()
    return bundle_io.Bundle(out, manifest)


# --- settings ---------------------------------------------------------------------------


class _Steps:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.progress is not None:
            self.progress(f"[{time.perf_counter() - self.start:5.1f}s] {message}")

    def finish(self) -> None:
        self(f"done in {time.perf_counter() - self.start:.1f} s")


def _policy(profile: TargetProfile, bits: Bits | None, group_size: int | str | None,
            symmetric: bool | None, keep: Sequence[str]) -> QuantPolicy:
    bits = profile.default_bits if bits is None else bits
    symmetric = True if symmetric is None else symmetric
    if isinstance(bits, str) and bits.isdigit():
        bits = int(bits)
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise BadInputError(f"--bits {bits!r} is not supported — use 1, 2, 3, 4 or ternary")
    if group_size is None:
        group_size = profile.default_group_size
    elif group_size == "per-row":
        group_size = None
    elif isinstance(group_size, str):
        if not group_size.isdigit():
            raise BadInputError(f"--group-size {group_size!r} must be a number or 'per-row'")
        group_size = int(group_size)
    if group_size is not None and (group_size <= 0 or group_size % 32):
        raise BadInputError(f"--group-size {group_size} must be a positive multiple of 32 "
                            "(32, 64, 128, ...) or 'per-row'")
    return QuantPolicy(bits=bits, group_size=group_size, symmetric=symmetric,
                       keep=tuple(keep))


def _quantizer(name: str) -> tuple[str, Callable[..., QuantizedTensor]]:
    if name not in ("auto", "rtn", "search"):
        raise BadInputError(f"--quantizer {name!r} is unknown — use auto, rtn or search")
    if name == "rtn":
        return name, quantize
    from edgepet.quant.search import search_quantize

    return "search", search_quantize


def _check_op_library(path: str | os.PathLike[str] | None, profile: TargetProfile
                      ) -> Path | None:
    """The op library to ship: the one given, else this install's build for the target."""
    if path is None:
        return _installed_cross_library(profile)
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--op-library {path} does not exist")
    arch = bundle_io.library_arch(path)
    if arch is not None and arch != profile.arch:
        raise BadInputError(
            f"--op-library {path} is built for {arch}, but target {profile.name} is "
            f"{profile.arch} — build it with {profile.toolchain.cxx}"
        )
    return path


def _installed_cross_library(profile: TargetProfile) -> Path | None:
    """The op library this edgepet built for a Linux target of another architecture
    (``op_library_path(arch)``); None for the host, or when the install has none."""
    if profile.is_host_platform() or profile.os != "linux":
        return None
    from edgepet.runtime import op_library_path

    try:
        candidate = Path(op_library_path(profile.arch))
    except FileNotFoundError:
        return None
    return candidate if bundle_io.library_arch(candidate) == profile.arch else None


def _ship_op_library(stage: Path, library: Path | None) -> str | None:
    if library is None:
        return None
    (stage / "lib").mkdir()
    shutil.copy2(library, stage / "lib" / library.name)
    return f"lib/{library.name}"


# --- the model and its tasks ------------------------------------------------------------


def _resolve_model(model: Any, trust: bool, arch: str | None,
                   arch_kwargs: dict | None, task: str | None = None,
                   tokenizer: Any = None) -> tx.LoadedModel:
    from edgepet.exporters import hf

    if isinstance(model, (str, os.PathLike)) and hf.is_hf_folder(model):
        wrapper, spec = hf.load_folder(model, task)
        return _text_model(wrapper, spec, "hf-folder", str(model))
    if hf.is_transformers_model(model):
        wrapper, spec = hf.from_transformers(model, task, tokenizer)
        return _text_model(wrapper, spec, "transformers", None)
    if task is not None:
        raise BadInputError(f"--task {task} applies to Hugging Face models (a folder with "
                            "config.json, --hf NAME, or a transformers model object)")
    if model is None:
        model = f"example:{DEFAULT_EXAMPLE}"
    if isinstance(model, str) and model.startswith("example:"):
        from edgepet.exporters.examples import EXAMPLES

        name = model.removeprefix("example:")
        if name not in EXAMPLES:
            raise BadInputError(f"unknown example {name!r} — examples: {', '.join(EXAMPLES)}")
        loaded = tx.from_module(EXAMPLES[name]().eval())
        loaded.source = model
        return loaded
    if isinstance(model, (str, os.PathLike)):
        return tx.load_model(model, trust, arch, arch_kwargs)
    return tx.from_module(model)


def _as_loaded(loaded: tx.LoadedModel, module: Any) -> tx.LoadedModel:
    return dataclasses.replace(loaded, model=module)


def _text_model(wrapper: nn.Module, spec: Any, kind: str, source: str | None
                ) -> tx.LoadedModel:
    from edgepet.exporters import hf

    return tx.LoadedModel(wrapper, kind, source, None, list(spec.input_names),
                          list(spec.output_names),
                          hf.dynamic_shapes(spec, wrapper.max_sequence), spec)


def _example(loaded: tx.LoadedModel, graph_module: Any, input_shapes: Sequence[str] | None,
             inputs: Sequence[np.ndarray] | None,
             calibration: str | os.PathLike[str] | Sequence[str] | None,
             ) -> tuple[tuple[torch.Tensor, ...], str]:
    """Example (= reference) inputs and whether they are real: "calibration" (given by
    the user), "sample-text" (edgepet's own English sentences through the model's
    tokenizer) or "synthetic" (random values of the right shape)."""
    from edgepet.exporters import hf
    from edgepet.runtime.text import read_text_file

    texts: list[str] | None = None
    if calibration is not None:
        if not isinstance(calibration, (str, os.PathLike)):
            texts = [str(t) for t in calibration]
        elif Path(calibration).suffix == ".npz":
            inputs = _read_calibration_arrays(Path(calibration), loaded)
        else:
            texts = read_text_file(calibration)
        if texts is not None and (loaded.text is None or loaded.text.tokenizer_json is None):
            raise BadInputError("text calibration needs a text model with a tokenizer (a "
                                "Hugging Face folder) — give arrays as an .npz instead")
    if inputs or input_shapes or loaded.text is None:
        example = tx.example_inputs(_as_loaded(loaded, graph_module), input_shapes, inputs)
        kind = "calibration" if calibration is not None else (
            "given" if inputs else "synthetic")
        return example, kind
    example = hf.example_inputs(loaded.text, texts)
    if texts is not None:
        return example, "calibration"
    return example, "sample-text" if loaded.text.tokenizer_json else "synthetic"


def _read_calibration_arrays(path: Path, loaded: tx.LoadedModel) -> list[np.ndarray]:
    if not path.is_file():
        raise BadInputError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise BadInputError(f"calibration file {path} is not a readable .npz ({error})"
                            ) from None
    names = loaded.input_names
    if names and all(n in arrays for n in names):
        return [arrays[n] for n in names]
    if names and len(arrays) != len(names):
        raise BadInputError(f"calibration file {path} holds {', '.join(arrays)}; the model "
                            f"takes {', '.join(names)}")
    return list(arrays.values())


def _torch_references(loaded: tx.LoadedModel, tasks: dict[str, nn.Module],
                      example: Sequence[torch.Tensor]) -> dict[str | None, list[np.ndarray]]:
    if not tasks:
        return {None: tx.torch_outputs(loaded.callable(), example)}
    return {name: tx.torch_outputs(model, example) for name, model in tasks.items()}


# --- quantization and adapters ----------------------------------------------------------


def _rewrite(model: onnx.ModelProto, policy: QuantPolicy, names: dict[str, list[str]],
             known: dict[str, KnownWeight], quantize_fn: Callable[..., QuantizedTensor],
             say: _Steps) -> RewriteResult:
    def tick(done: int, total: int, layer: str) -> None:
        if done == total or done % max(1, total // 4) == 0:
            say(f"  {done}/{total} layers ({layer})")

    try:
        result = rewrite_linears(model, policy, names, known, tick, quantize_fn)
    except ValueError as error:
        raise BadInputError(f"quantizing failed: {error}") from None
    if not any(layer.bits is not None for layer in result.layers):
        raise BadInputError(
            "the model has no linear layer with a constant weight to quantize (or --keep "
            "kept them all) — edgepet rewrites MatMul/Gemm with constant weights"
        )
    return result


# --- writing ----------------------------------------------------------------------------


def _write_model(stage: Path, model: onnx.ModelProto, threshold: int) -> dict[str, Any]:
    large = model.ByteSize() > threshold
    path = stage / bundle_io.MODEL
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=bundle_io.EXTERNAL_DATA,
                        size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return {"external_data": bundle_io.EXTERNAL_DATA if large else None}


def _write_tokenizer(stage: Path, text: Any) -> str | None:
    if text is None or text.tokenizer_json is None:
        return None
    (stage / "tokenizer.json").write_text(text.tokenizer_json, encoding="utf-8")
    return "tokenizer.json"


def _describe_reference(manifest: dict[str, Any], loaded: tx.LoadedModel,
                        policy: QuantPolicy, inputs_kind: str,
                        example: Sequence[torch.Tensor], files: dict[str, Any]) -> None:
    """What the reference inputs are and which metrics the bundle is held to."""
    ref = manifest["reference"]
    ref["inputs_kind"] = inputs_kind
    ref["samples"] = int(example[0].shape[0]) if example and example[0].ndim else 1
    ref["metrics"] = _metrics_for(loaded, manifest["outputs"], policy.bits,
                                          ref["samples"])
    if loaded.text is not None:
        manifest["text"] = loaded.text.to_manifest(files.get("tokenizer"))


def _metrics_for(loaded: tx.LoadedModel, outputs: list[dict[str, Any]], bits: Bits,
                 samples: int) -> dict[str, Any]:
    """Which metric fits the model's first output, and its bound at ``bits``."""
    task = loaded.text.task if loaded.text is not None else None
    first = outputs[0]["name"] if outputs else None
    if task == "sentence-embedding":
        return {"kind": "embedding", "output": first,
                "limits": {"cosine_mean": [">=", MIN_EMBEDDING_COSINE[bits]]}}
    if task == "text-classification":
        limits = ({"top1_agreement": [">=", MIN_TOP1_AGREEMENT[bits]]}
                  if samples >= bundle_io.MIN_LOGIT_SAMPLES else {})
        return {"kind": "logits", "output": first, "limits": limits}
    return {"kind": "relative-l2", "output": first, "limits": {}}


def _describe_accuracy(measured: Sequence[bundle_io.VerifyResult]) -> list[str]:
    lines = []
    for r in measured:
        name = f" [{r.adapter}]" if r.adapter else ""
        parts = [f"{k.replace('_', ' ')} {v:.4f}" for k, v in r.metrics.items()]
        parts.append(f"relative error {r.vs_pytorch:.4f}")
        lines.append(f"  accuracy{name} vs PyTorch fp32: " + ", ".join(parts)
                     + ("" if r.ok else "  (BEYOND TOLERANCE)"))
    return lines


def _refusal(result: bundle_io.VerifyResult, policy: QuantPolicy) -> str:
    hints = []
    if policy.bits != 4:
        hints.append("more bits (--bits 4)")
    if policy.symmetric or (policy.group_size or 10**9) > 32:
        hints.append("--group-size 32 --no-symmetric")
    hints.append("--budget-error (a per-layer plan)")
    hints.append("--keep PATTERN for the most sensitive layers")
    return ("the bundle misses its accuracy tolerance on the reference inputs: "
            + "; ".join(result.failures()) + " — nothing was written. Try "
            + ", ".join(hints) + ", or pass --allow-inaccurate to write it anyway")


def _write_reference(stage: Path, result: RewriteResult, example: Sequence[torch.Tensor],
                     references: dict[str | None, list[np.ndarray]],
                     task_adapters: dict[str, adapters_io.TaskAdapter]) -> dict[str, Any]:
    folder = stage / bundle_io.REFERENCE_DIR
    folder.mkdir()
    overridable = {n for a in task_adapters.values() for n in a.parameters}
    input_names = [i.name for i in result.model.graph.input if i.name not in overridable]
    output_names = [o.name for o in result.model.graph.output]
    if len(input_names) != len(example):
        raise RuntimeError(f"ONNX graph has inputs {input_names}, expected {len(example)}")
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, example, strict=False)}
    np.savez(folder / "inputs.npz", **feeds)
    entries: dict[str, Any] = {"inputs": "reference/inputs.npz", "per_task": {}}
    for task, outputs in references.items():
        suffix = "" if task is None or task == next(iter(references)) else f".{task}"
        quantized = dict(result.quantized)
        if task in task_adapters:
            quantized.update(task_adapters[task].quantized)
        twin = dequantized_twin(result.model, quantized)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(twin.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        twin_out = session.run(None, feeds)
        if len(outputs) != len(output_names):
            raise RuntimeError(f"PyTorch gave {len(outputs)} outputs, ONNX {len(output_names)}")
        np.savez(folder / f"outputs{suffix}.npz", **dict(zip(output_names, outputs, strict=True)))
        np.savez(folder / f"quantized_outputs{suffix}.npz",
                 **dict(zip(output_names, twin_out, strict=True)))
        entries["per_task"][task] = (f"reference/outputs{suffix}.npz",
                                     f"reference/quantized_outputs{suffix}.npz")
    return entries
