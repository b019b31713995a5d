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
import functools
import os
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
from edgepet.exporters import litert
from edgepet.exporters import torch_export as tx
from edgepet.exporters.fuse import fuse_shared_inputs
from edgepet.exporters.manifest import build_manifest, initializer_bytes, write_manifest
from edgepet.exporters.rewrite import (
    GATHER_Q_DOMAIN,
    GATHER_Q_OP,
    KnownWeight,
    LayerOption,
    QuantPolicy,
    RewriteResult,
    dequantized_twin,
    digest,
    make_overridable,
    plan_layers,
    quantize_embeddings,
    rewrite_linears,
)
from edgepet.quant import QuantizedTensor, quantize
from edgepet.quant.tensor import SUPPORTED_BITS, ZERO_LEVEL_BITS, Bits
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
#: Values per scale and zero point of a quantized embedding table.
EMBEDDING_BLOCK = 32


class InaccurateBundleError(BadInputError):
    """The exported bundle misses its accuracy tolerance (nothing was written)."""

Progress = Callable[[str], None]


def _bad_input_at_the_boundary(function: Callable[..., Any]) -> Callable[..., Any]:
    """The export API's one translation of errors: a ``ValueError`` from any step (an
    unknown target, a weight that cannot be quantized, a PET layer that cannot merge) is
    the input's fault and leaves as :class:`BadInputError` with its message unchanged.
    Steps raise plain ``ValueError`` and wrap nothing themselves."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BadInputError:
            raise
        except ValueError as error:
            raise BadInputError(str(error)) from None

    return wrapper


@_bad_input_at_the_boundary
def export(
    model: Any = None,
    out: str | os.PathLike[str] = "edgepet-bundle",
    *,
    target: str | TargetProfile | None = None,
    bits: Bits | None = None,
    group_size: int | str | None = None,
    symmetric: bool | None = None,
    zero_level: bool = False,
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
    budget_error: float | None = None,
    max_size: int | None = None,
    embedding_bits: int | str | None = "auto",
    with_tflite: bool = False,
    require_native: bool = False,
    tied_head: str | None = None,
    calibration_tokens: int | None = None,
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
        symmetric: symmetric codes (False: a zero point per group). Default: asymmetric
            for Hugging Face text models (measured: higher embedding cosine at the same
            bits) and decoder checkpoints, symmetric otherwise.
        zero_level: symmetric codes with a zero level, ``s * (q - 2^(b-1))`` (the grid
            of Q4_0 and of ONNX Runtime's symmetric MatMulNBits) instead of the odd levels
            ``s * (2q - (2^b - 1))``; 2, 3 and 4 bits, implies ``symmetric``. Measured on
            all-MiniLM-L6-v2 (``benchmarks/code_grids.py``): 1 - cosine 0.029 against
            0.044 at 4 bits group 32, 0.097 against 0.240 at 3 bits (docs/export.md).
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
            to ship in ``lib/``; devices of that architecture run with it. Without it, a
            bundle for another platform ships this install's build for that platform
            (``lib/``) and ``edgepet-run`` (``bin/``); the manifest's
            ``operator.missing`` names what this install lacks and how to build it.
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
        budget_error: a mixed-precision plan: measure the output error each linear layer
            adds when quantized alone (1 - mean cosine for embeddings, relative L2
            otherwise), then give the most sensitive layers group 32 with asymmetric codes,
            or float, until the summed estimate is within this budget.
        max_size: a plan under a size bound (bytes of all weights): layers go down from
            4-bit group 32 to 4-, 3- and 2-bit at the default group, least sensitive first.
        embedding_bits: 4 or 8 to store large embedding tables (>= 65536 values) as
            ``com.microsoft.GatherBlockQuantized`` codes (block 32); None keeps them float;
            "auto": 4 for Hugging Face text models, float otherwise.
        with_tflite: also convert the float model to ``baselines/model.tflite`` with
            litert-torch (for ``edgepet bench``'s litert baseline); BadInputError, and
            nothing written, when litert-torch is absent or cannot convert the model.
        require_native: BadInputError, instead of a warning, when the op library or
            ``edgepet-run`` for the target's platform cannot be shipped.
        tied_head: decoders only: "separate" or "shared" for a head tied to the
            embeddings (see ``export_decoder``); None: the decoder default.
        calibration_tokens: decoders only: tokens of calibration text for GPTQ.
    """
    from edgepet.exporters.llm.export import export_decoder_options, is_decoder_source

    # a GGUF file or Hugging Face folder of a Llama-family decoder; encoders go on below
    if is_decoder_source(model):
        decoder_only = {key: value for key, value in (("tied_head", tied_head), (
            "calibration_tokens", calibration_tokens)) if value is not None}
        return export_decoder_options(
            model, out, target=target, bits=bits, group_size=group_size,
            symmetric=symmetric, zero_level=zero_level, keep=keep, quantizer=quantizer,
            adapters=adapters,
            input_shapes=input_shapes, inputs=inputs, trust=trust, arch=arch,
            arch_kwargs=arch_kwargs, overwrite=overwrite, op_library=op_library,
            progress=progress, task=task, tokenizer=tokenizer, calibration=calibration,
            allow_inaccurate=allow_inaccurate, budget_error=budget_error, max_size=max_size,
            embedding_bits=embedding_bits, with_tflite=with_tflite,
            require_native=require_native, **decoder_only)
    if tied_head is not None or calibration_tokens is not None:
        raise BadInputError("tied_head and calibration_tokens are for decoder checkpoints (a "
                            "GGUF file or a Hugging Face Llama folder) — leave them out")
    say = _Steps(progress)
    profile = target if isinstance(target, TargetProfile) else (
        get_target(target) if target else host_target())
    policy = _policy(profile, bits, group_size, symmetric, keep, zero_level)
    quantizer, quantize_fn = _quantizer(quantizer)
    if max_size is not None and max_size <= 0:
        raise BadInputError(f"--max-size {max_size} must be a positive size, e.g. 20MB")
    if budget_error is not None and not budget_error > 0:
        raise BadInputError(f"--budget-error {budget_error} must be a positive number, e.g. "
                            "0.01")
    native = native_files_for(profile, op_library, require_native)
    tflite_converter = litert.converter_version() if with_tflite else None
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
        if loaded.output_names is None and loaded.kind in ("exported-program", "module"):
            loaded.output_names = tx.output_names(loaded.callable(), example)
        if symmetric is None and not zero_level:
            policy = dataclasses.replace(policy, symmetric=loaded.text is None)
        table_bits = _embedding_bits(embedding_bits, loaded)
        layer_fn = _LayerQuantizer(quantize_fn, quantizer == "search" and loaded.text is not None
                                   and inputs_kind != "synthetic", graph_module, example,
                                   loaded.text, say)
        plan = None
        if (budget_error is not None or max_size is not None) and not tasks:
            plan = _plan(graph_module, example, references[None], policy, layer_fn,
                         budget_error, max_size, loaded, table_bits, say)
            policy = dataclasses.replace(policy, keep=policy.keep + tuple(
                layer for layer, o in plan["options"].items() if o.bits is None))
        elif budget_error is not None or max_size is not None:
            raise BadInputError("--budget-error/--max-size plan single-task models; with "
                                "adapters, set --bits/--group-size/--keep by hand")
        files: dict[str, Any] = {}
        if tflite_converter is not None:
            say(f"converting the float model to .tflite with litert-torch {tflite_converter}")
            (stage / litert.FILE).parent.mkdir()
            files["tflite"] = {**litert.convert(graph_module, example, stage / litert.FILE),
                               "converter": f"litert-torch {tflite_converter}"}
        say("exporting to ONNX with torch")
        float_model = tx.to_onnx(_as_loaded(loaded, graph_module), example)
        say(f"quantizing linear layers to {policy.bits} bits"
            + (" (per-layer plan)" if plan else ""))
        first_task = next(iter(tasks.values())) if tasks else graph_module
        known = adapters_io.known_weights(first_task, switchable, policy, quantize_fn)
        names: dict[str, list[str]] = {}
        for name, value in tx.named_matrices(graph_module).items():
            names.setdefault(digest(value.detach().cpu().numpy()), []).append(name)
        layer_fn.names = names
        float_bytes = initializer_bytes(float_model)
        result = fuse_shared_inputs(_rewrite(float_model, policy, names, known, layer_fn, say))
        embeddings = []
        if table_bits is not None:
            embeddings = quantize_embeddings(result.model, table_bits, EMBEDDING_BLOCK,
                                             keep=policy.keep)
            for e in embeddings:
                say(f"  embedding table {e.name} [{e.rows}, {e.dim}] -> {e.bits}-bit codes, "
                    f"block {e.block_size} ({e.float_bytes / 1e6:.1f} -> "
                    f"{e.stored_bytes / 1e6:.1f} MB)")
        del float_model  # the rewrite made its own copy; the float weights can go
        say("writing adapters and reference data")
        task_adapters = adapters_io.task_adapters(result, tasks, switchable, policy, quantize_fn,
                                                    known)
        make_overridable(result.model, sorted(
            {n for a in task_adapters.values() for n in a.parameters}))
        files.update(_write_model(stage, result.model, external_data_threshold))
        files.update(ship_native(stage, native, say))
        files["tokenizer"] = _write_tokenizer(stage, loaded.text)
        adapter_entries = adapters_io.write_adapters(stage, task_adapters)
        reference = _write_reference(stage, result, example, references, task_adapters)
        manifest = build_manifest(
            stage, loaded, profile, policy, quantizer, result, float_bytes, files,
            adapter_entries, reference, pet_info,
        )
        _describe_reference(manifest, loaded, policy, inputs_kind, example, files)
        manifest["quantization"]["symmetric"] = policy.symmetric
        if policy.zero_level:
            manifest["quantization"]["zero_level"] = True
        manifest["quantization"]["plan"] = _plan_manifest(plan)
        manifest["quantization"]["embeddings"] = ({
            "op": f"{GATHER_Q_DOMAIN}.{GATHER_Q_OP}", "bits": table_bits,
            "block_size": EMBEDDING_BLOCK, "tables": [e.to_dict() for e in embeddings],
        } if embeddings else None)
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
            symmetric: bool | None, keep: Sequence[str], zero_level: bool = False
            ) -> QuantPolicy:
    bits = profile.default_bits if bits is None else bits
    if zero_level and symmetric is False:
        raise BadInputError("--zero-level codes are symmetric (no zero points) — drop "
                            "--no-symmetric")
    symmetric = True if symmetric is None else symmetric
    if isinstance(bits, str) and bits.isdigit():
        bits = int(bits)
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise BadInputError(f"--bits {bits!r} is not supported — use 1, 2, 3, 4 or ternary")
    if zero_level and bits not in ZERO_LEVEL_BITS:
        raise BadInputError(f"--zero-level is for 2-, 3- and 4-bit codes, not --bits {bits} "
                            "(1-bit codes are signs; ternary codes have a zero already)")
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
                       keep=tuple(keep), zero_level=bool(zero_level))


def _quantizer(name: str) -> tuple[str, Callable[..., QuantizedTensor]]:
    if name not in ("auto", "rtn", "search"):
        raise BadInputError(f"--quantizer {name!r} is unknown — use auto, rtn or search")
    if name == "rtn":
        return name, quantize
    from edgepet.quant.search import search_quantize

    return "search", search_quantize


def native_files_for(profile: TargetProfile, op_library: str | os.PathLike[str] | None,
                     require_native: bool) -> bundle_writer.NativeFiles:
    """The native files a bundle for ``profile`` ships (``op_library``: the user's, checked);
    with ``require_native``, BadInputError before anything is written if one is missing."""
    native = bundle_writer.native_files(profile, _check_op_library(op_library, profile))
    if native.missing and require_native:
        raise BadInputError(_missing_native(native) + " — nothing was written")
    return native


def ship_native(stage: Path, native: bundle_writer.NativeFiles, say: Progress
                ) -> dict[str, Any]:
    """Copy ``native`` into the staged bundle; the manifest's ``operator`` file entries
    (``library``, ``runner``, ``missing``), warning about what is missing."""
    files: dict[str, Any] = dict(bundle_writer.ship_native(stage, native))
    files["missing"] = native.missing
    if native.missing:
        say(f"warning: {_missing_native(native)} — the bundle says so in its manifest "
            "(operator.missing)")
    return files


def _check_op_library(path: str | os.PathLike[str] | None, profile: TargetProfile
                      ) -> Path | None:
    """The op library the user gave to ship (``--op-library``), checked; None if none."""
    if path is None:
        return None
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


def _missing_native(native: bundle_writer.NativeFiles) -> str:
    """One sentence: what a bundle for ``native.platform`` lacks, and how to build it."""
    whats = " and ".join(m["what"] for m in native.missing)
    return (f"this edgepet has no {whats} for {native.platform}, so the bundle cannot carry "
            f"{'them' if len(native.missing) > 1 else 'it'}: {native.missing[0]['how']}")


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
            "given" if inputs or (loaded.example_inputs and not input_shapes) else "synthetic")
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

    result = rewrite_linears(model, policy, names, known, tick, quantize_fn)
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


class _LayerQuantizer:
    """The quantizer the rewrite calls per layer: it applies a plan's per-layer option,
    weighs weight error by the layer's real input rows (activation-aware search, for text
    models with real reference inputs) and keeps what it computed for the plan."""

    def __init__(self, base: Callable[..., QuantizedTensor], activation_aware: bool,
                 module: Any, example: Sequence[torch.Tensor], text: Any,
                 say: _Steps) -> None:
        self.base = base
        self.names: dict[str, list[str]] = {}
        self.plan: dict[str, LayerOption] = {}
        self.cache: dict[tuple, QuantizedTensor] = {}
        self.activations: dict[str, np.ndarray] = {}
        if activation_aware and tx.linear_layers(module):
            mask = None
            if text is not None and "attention_mask" in text.input_names:
                mask = example[text.input_names.index("attention_mask")]
            say("  measuring each linear layer's inputs on the reference data "
                "(activation-aware quantization)")
            self.activations = tx.linear_inputs(module, example, mask=mask)

    def quantize(self, layer: str, w: np.ndarray, option: LayerOption) -> QuantizedTensor:
        key = (layer, digest(w), option)
        if key not in self.cache:
            rows = self.activations.get(layer)
            extra = {"zero_level": True} if option.zero_level else {}
            if rows is not None and rows.shape[-1] == w.shape[1]:
                extra["activations"] = rows
            self.cache[key] = self.base(w, option.bits, option.group_size, option.symmetric,
                                        **extra)
        return self.cache[key]

    def __call__(self, w: np.ndarray, bits: Bits, group_size: int | None,
                 symmetric: bool, zero_level: bool = False) -> QuantizedTensor:
        candidates = self.names.get(digest(w)) or ["?"]
        layer = candidates[0].removesuffix(".weight")
        option = self.plan.get(layer) or LayerOption(bits, group_size, symmetric, zero_level)
        return self.quantize(layer, w, option)


def _embedding_bits(value: int | str | None, loaded: tx.LoadedModel) -> int | None:
    if value == "auto":
        return 4 if loaded.text is not None else None
    if value in (None, "float", "none"):
        return None
    if str(value) not in ("4", "8"):
        raise BadInputError(f"--embedding-bits {value!r} must be 4, 8 or float")
    return int(value)


def _plan(module: Any, example: Sequence[torch.Tensor], reference: list[np.ndarray],
          policy: QuantPolicy, layer_fn: _LayerQuantizer, budget_error: float | None,
          max_size: int | None, loaded: tx.LoadedModel, table_bits: int | None,
          say: _Steps) -> dict[str, Any]:
    """Measure each layer's sensitivity and choose its bits, group and symmetry."""
    layers = {name: m for name, m in tx.linear_layers(module).items()
              if not policy.keeps(name)}
    if not layers:
        raise BadInputError("--budget-error/--max-size need a model whose linear layers are "
                            "torch.nn.Linear modules (an nn.Module or a Hugging Face folder)")
    base = LayerOption(policy.bits, policy.group_size, policy.symmetric, policy.zero_level)
    if max_size is not None:
        group = policy.group_size
        options = [LayerOption(b, group, False) for b in (2, 3, 4)]
        options.append(LayerOption(4, 32, False))
        if budget_error is not None:
            options.append(LayerOption(None, None, True))
    else:
        options = [base]
        if (base.group_size, base.symmetric) != (32, False):
            options.append(LayerOption(base.bits, 32, False))
        options.append(LayerOption(None, None, True))
    metric = "embedding" if (loaded.text is not None
                             and loaded.text.task == "sentence-embedding") else "relative-l2"
    say(f"  measuring the sensitivity of {len(layers)} layers to "
        + ", ".join(o.label() for o in options if o.bits is not None))
    weights = {}
    for name, m in layers.items():
        w = m.weight.detach().cpu().numpy()
        weights[name] = {o: (w if o.bits is None else layer_fn.quantize(name, w, o).dequantize())
                         for o in options}
    errors = tx.layer_errors(module, example, reference, weights, metric)
    shapes = {name: tuple(m.weight.shape) for name, m in layers.items()}
    max_bytes = None
    if max_size is not None:
        other = _other_weight_bytes(module, layers, table_bits)
        size = bundle_io.size_text
        max_bytes = max_size - other
        if max_bytes <= 0:
            raise BadInputError(f"--max-size {size(max_size)} is smaller than the model's "
                                f"weights outside its linear layers ({size(other)}) "
                                "alone — raise it, or store embedding tables smaller "
                                "(--embedding-bits 4)")

        def needs(option: LayerOption) -> int:
            return sum(option.stored_bytes(*shape) for shape in shapes.values())

        smallest = min((o for o in options if o.bits is not None), key=needs)
        least = needs(smallest)
        if least > max_bytes:
            raise BadInputError(
                f"--max-size {size(max_size)} cannot be met: with every linear layer at "
                f"{smallest.label()} the weights need {size(least + other)} "
                f"({size(other)} of them outside the linear layers) — raise --max-size")
    chosen = plan_layers(shapes, errors, options, budget_error, max_bytes)
    layer_fn.plan = {k: v for k, v in chosen.items() if v.bits is not None}
    estimate = sum(errors[k][v] for k, v in chosen.items())
    counts: dict[str, int] = {}
    for option in chosen.values():
        counts[option.label()] = counts.get(option.label(), 0) + 1
    summary = (", ".join(f"{n} x {label}" for label, n in sorted(counts.items()))
               + f"; estimated error {estimate:.4f} ({metric})")
    say(f"  plan: {summary}")
    ranked = sorted(layers, key=lambda n: -errors[n][options[0]])
    for name in ranked[:5]:
        say(f"    most sensitive: {name}: {errors[name][options[0]]:.4f} at "
            f"{options[0].label()} -> {chosen[name].label()}")
    return {"options": chosen, "errors": errors, "metric": metric, "summary": summary,
            "budget_error": budget_error, "max_size": max_size, "estimate": estimate,
            "base": options[0]}


def _other_weight_bytes(module: Any, layers: dict[str, Any], table_bits: int | None) -> int:
    """Bytes of every weight but the planned linear layers (embeddings as stored)."""
    seen: set[int] = set()
    total = 0
    linear = {id(m.weight) for m in layers.values()}
    tables = {id(m.weight): m.weight for m in module.modules() if isinstance(m, nn.Embedding)}
    for p in list(module.parameters()) + list(module.buffers()):
        if id(p) in seen or id(p) in linear:
            continue
        seen.add(id(p))
        if id(p) in tables and table_bits is not None and p.numel() >= 1 << 16:
            rows, dim = p.shape
            total += rows * dim * table_bits // 8 + rows * (dim // EMBEDDING_BLOCK) * 5
        else:
            total += p.numel() * p.element_size()
    return total


def _plan_manifest(plan: dict[str, Any] | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    errors = plan["errors"]
    return {
        "budget_error": plan["budget_error"], "max_size_bytes": plan["max_size"],
        "metric": plan["metric"], "estimated_error": plan["estimate"],
        "summary": plan["summary"],
        "layers": {name: {"bits": o.bits, "group_size": o.group_size,
                          "symmetric": o.symmetric,
                          **({"zero_level": True} if o.zero_level else {}),
                          "sensitivity": {opt.label(): round(e, 6)
                                          for opt, e in errors[name].items()}}
                   for name, o in plan["options"].items()},
    }


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
