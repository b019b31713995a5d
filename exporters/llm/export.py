"""``edgepet export MODEL.gguf|HF_FOLDER``: a Llama-family checkpoint to a decoder bundle.

Steps: read the checkpoint (:mod:`.checkpoint`) -> choose bits per projection (``--bits``,
``--keep``, per-pattern overrides, or a plan under ``--max-size``: :mod:`.plan`) -> quantize
-> build the decoder graph (:mod:`.graph`) -> write the tokenizer, the generation settings
and reference data (a fixed prompt through the fp32 graph and through the dequantized
twin) -> check the bundle against its twin in the staging folder, and only then move it
into place.

Defaults (see docs/llm.md for the table they come from): every projection including the
tied output head is a ``LutMatMul`` (4-bit, group 32, asymmetric; at 2 and 3 bits only
gate/up go below 4, quantized with GPTQ calibrated on text, :mod:`.calibrate`; round to
nearest at 4 bits); the embedding table is 4-bit ``GatherBlockQuantized`` codes (a gather
reads one row per token, so its bits cost file size, not decode time); a head tied to the
embeddings can read the table's codes instead (``tied_head="shared"``: stored once). One
adapter merges into the projections before quantization; several stay switchable
(:mod:`.adapter`), each one's switchable projections calibrated with its own forward.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import edgepet
from edgepet.exporters import bundle as bundle_writer
from edgepet.exporters.llm import adapter as llm_adapter
from edgepet.exporters.llm import calibrate
from edgepet.exporters.llm import checkpoint as ckpt
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm import plan as llm_plan
from edgepet.exporters.manifest import initializer_bytes, value_info, write_manifest
from edgepet.exporters.rewrite import QuantPolicy, dequantized_twin
from edgepet.quant.tensor import SUPPORTED_BITS, ZERO_LEVEL_BITS, Bits, QuantizedTensor
from edgepet.runtime import bundle as bundle_io
from edgepet.runtime import manifest as manifest_schema
from edgepet.runtime.errors import BadInputError
from edgepet.targets import TargetProfile, get_target, host_target

#: File names a decoder bundle adds.
TOKENIZER_FILE = "tokenizer.json"
#: The prompt whose logits the bundle carries as reference data.
REFERENCE_PROMPT = "The capital of France is Paris. The capital of Italy is"
#: Relative logit error (bundle vs the fp32 graph) the bundle may show, per width.
#: Measured on SmolLM2-135M (search quantizer, group 64) with headroom.
TOLERANCE_VS_FP32: dict[Bits, float] = {4: 0.4, 3: 0.7, 2: 1.2, "ternary": 1.5, 1: 1.6}
#: Bundle vs its own dequantized twin: only the kernels' int8 activation tables differ,
#: but compounded over 30 layers rather than the 2-3 of the examples. SmolLM2-135M:
#: 4-bit asym g32 0.034, 4-bit sym g64 0.070, 2-bit asym g64 (a destroyed model) 0.145.
TOLERANCE_VS_QUANTIZED = 0.3
#: Longest context the RoPE tables cover by default (the model's own limit if smaller).
DEFAULT_MAX_CONTEXT = 8192
#: Decoder defaults, chosen from the SmolLM2-135M table in docs/llm.md.
DEFAULT_BITS: Bits = 4
DEFAULT_GROUP_SIZE = 32
DEFAULT_SYMMETRIC = False
EMBEDDING_DTYPES = {"float16": np.float16, "float32": np.float32}
#: Embedding tables as codes: com.microsoft.GatherBlockQuantized, asymmetric, one scale and
#: zero point per block of 32 values of a row (exporters.rewrite.quantize_embeddings).
EMBEDDING_CODE_BITS = (4, 8)
EMBEDDING_BLOCK = 32
#: Default embedding storage for decoders, chosen from the table in docs/llm.md.
DEFAULT_EMBEDDING: str | int = 4
#: A tied head has codes of its own ("separate", the default) or reads the embedding
#: table's 4-bit codes ("shared": 17.7 MB smaller for SmolLM2-135M, but perplexity 16.33
#: against 15.59, more resident memory and slower decoding; the figures in docs/llm.md).
DEFAULT_TIED_HEAD = "separate"
#: Storage of the KV cache (``--kv-cache``): float16 halves the bytes a decode step reads per
#: cached position (llama.cpp's default f16 cache); float32 is exact.
KV_CACHE_DTYPES: dict[str, type] = {"float16": np.float16, "float32": np.float32}
DEFAULT_KV_CACHE = "float16"
#: Projections kept at 4 bits by default when the bundle is 2 or 3 bits wide: SmolLM2-135M's
#: attention and down projections and its head lose the model at 3 bits already, while
#: gate/up (half the weights) tolerate 3 bits (the table in docs/llm.md).
SENSITIVE_AT_4_BITS: dict[str, Bits] = {"lm_head": 4, "layers.*.attn.*": 4,
                                        "layers.*.mlp.down": 4}
DEFAULT_LAYER_BITS: dict[Bits, dict[str, Bits]] = {2: SENSITIVE_AT_4_BITS,
                                                   3: SENSITIVE_AT_4_BITS}
#: Width -> how many first and last layers keep every projection at 4 bits by default (only
#: in models with at least four times as many layers): SmolLM2-135M ``--bits 2`` with GPTQ,
#: perplexity 21.59 -> 19.51 (twin) for 1.8 MB (docs/llm.md).
DEFAULT_END_LAYERS_AT_4_BITS: dict[Bits, int] = {2: 2}

Progress = Callable[[str], None]


def export_decoder(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: str | TargetProfile | None = None,
    bits: Bits | None = None,
    group_size: int | str | None = None,
    symmetric: bool | None = None,
    zero_level: bool = False,
    keep: Sequence[str] = (),
    quantizer: str = "auto",
    calibration: str | os.PathLike[str] | None = None,
    calibration_tokens: int | None = None,
    layer_bits: Mapping[str, Bits] | None = None,
    embedding: str | int = DEFAULT_EMBEDDING,
    adapters: Mapping[str, Any] | None = None,
    tied_head: str = DEFAULT_TIED_HEAD,
    max_context: int | None = None,
    max_size: int | None = None,
    kv_cache: str = DEFAULT_KV_CACHE,
    overwrite: bool = False,
    op_library: str | os.PathLike[str] | None = None,
    require_native: bool = False,
    progress: Progress | None = None,
) -> bundle_io.Bundle:
    """Export a GGUF file or Hugging Face folder of a Llama-family model to a decoder bundle.

    Args:
        source: ``MODEL.gguf`` or a folder with config.json, *.safetensors, tokenizer.json.
        out: the bundle folder to write.
        target: the target profile (default: this machine).
        bits: 1, 2, 3, 4 or "ternary" (default 4 — not the target's default: the table in
            docs/llm.md shows a 135M model losing its language below 4 bits).
        group_size: inputs per scale (default 32).
        symmetric: symmetric codes (default False: a zero point per group; SmolLM2 at 4 bits
            g64: perplexity 37.8 symmetric, 20.2 asymmetric).
        zero_level: symmetric codes with a zero level (as for
            :func:`edgepet.exporters.pipeline.export`); projections at 1 bit or ternary
            (``layer_bits``) keep their own codes. Not with ``max_size``.
        quantizer: "rtn", "search", "gptq" or "auto" (:func:`auto_quantizer`: gptq at 2
            and 3 bits or when ``calibration`` is given, rtn otherwise; see docs/llm.md).
        calibration: a UTF-8 text file GPTQ calibrates on (default: Python standard-library
            docstrings, :func:`edgepet.exporters.llm.calibrate.default_text`).
        calibration_tokens: calibration tokens for GPTQ (default 8,192, at least 128).
        keep: fnmatch patterns of projections left in float: fused names
            (``layers.0.attn.qkv``, ``layers.*.mlp.down``, ``lm_head``) or checkpoint names
            (``model.layers.0.self_attn.q_proj`` keeps the whole fused ``qkv``).
        layer_bits: pattern -> bits for projections that differ from ``bits`` (default
            for 2 and 3 bits: :data:`DEFAULT_LAYER_BITS`; ``{}`` for one width throughout;
            e.g.
            ``{"lm_head": 4}``); the first matching pattern wins; ``--keep`` wins over it.
        embedding: storage of the embedding table: 4 (default) or 8 for codes
            (``com.microsoft.GatherBlockQuantized``, block 32), "float16" or "float32".
        adapters: ``{name: adapter}``: a PEFT folder, or a model carrying ``edgepet.pet``
            layers. One merges into the float projections before quantization; with
            several, the projections that differ between them stay switchable
            (``adapters/NAME.onnx_adapter``; the first adapter is the graph's default).
        tied_head: for a head tied to the embeddings: "separate" (default: a ``LutMatMul``
            of its own) or "shared" (a ``MatMulNBits`` reading the embedding table's 4-bit
            codes: the matrix stored once). Untied models refuse "shared".
        max_context: longest prompt + generation the bundle serves (default: the model's
            context length, at most 8192).
        max_size: bytes the bundle's weights (``sizes.weight_bytes``) may take: each
            projection gets 2, 3 or 4 bits (at most ``bits``), the least sensitive going
            down first (:mod:`.plan`); the plan goes into the manifest
            (``quantization.plan``). BadInputError naming the smallest possible size when
            it cannot be met. Not with ``layer_bits``.
        kv_cache: the KV cache's storage, "float16" (default: half the bytes per cached
            position, as llama.cpp's default f16 cache) or "float32" (exact).
        overwrite: replace an existing bundle at ``out``.
        op_library, require_native: as for :func:`edgepet.exporters.pipeline.export`: the
            op library and ``edgepet-run`` built for the target's platform travel in the
            bundle, or ``operator.missing`` says what is missing (an error with
            ``require_native``).
        progress: called with a line per step.
    """
    from edgepet.exporters.pipeline import _policy, _quantizer, native_files_for, ship_native

    start = time.perf_counter()

    def say(message: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - start:5.1f}s] {message}")

    profile = target if isinstance(target, TargetProfile) else (
        get_target(target) if target else host_target())
    if symmetric is None:
        symmetric = True if zero_level else DEFAULT_SYMMETRIC
    policy = _policy(profile, DEFAULT_BITS if bits is None else bits,
                     DEFAULT_GROUP_SIZE if group_size is None else group_size,
                     symmetric, keep, zero_level)
    if zero_level and max_size is not None:
        raise BadInputError("--zero-level with --max-size is not supported yet: the size "
                            "plan measures odd-level and asymmetric codes — leave one out")
    widths = _check_max_size(max_size, bits, layer_bits)
    requested = quantizer
    quantizer = auto_quantizer(quantizer, widths[0] if widths else policy.bits, calibration,
                               calibration_tokens, len(adapters or {}))
    quantize_fn = None if quantizer == "gptq" else _quantizer(quantizer)[1]
    if quantize_fn is None:
        calibrate.check_options(calibration, calibration_tokens)
    embedding, table_bits = _embedding_choice(embedding)
    table_dtype = np.float32 if table_bits else EMBEDDING_DTYPES[embedding]
    overrides = _check_layer_bits(DEFAULT_LAYER_BITS.get(policy.bits, {})
                                  if layer_bits is None else layer_bits)
    llm_adapter.check_names(adapters)
    if tied_head not in llm_graph.HEAD_CHOICES:
        raise BadInputError(f"--tied-head {tied_head!r} is unknown — use "
                            f"{' or '.join(llm_graph.HEAD_CHOICES)}")
    if kv_cache not in KV_CACHE_DTYPES:
        raise BadInputError(f"--kv-cache {kv_cache!r} is unknown — use "
                            f"{' or '.join(KV_CACHE_DTYPES)}")
    kv_dtype = KV_CACHE_DTYPES[kv_cache]
    native = native_files_for(profile, op_library, require_native)
    out = Path(out)
    with bundle_writer.staged_output(out, overwrite) as stage:
        say(f"reading {source}")
        ck = ckpt.load_checkpoint(source)
        if layer_bits is None and max_size is None:
            overrides = _with_end_layers(overrides, policy.bits, ck.config.num_layers)
        head = _head_choice(tied_head, ck, table_bits, policy, overrides)
        tasks, adapter_record = llm_adapter.task_checkpoints(ck, adapters)
        ck = next(iter(tasks.values()), ck)
        if adapter_record and adapter_record.get("merged"):
            say(f"merged adapter {adapter_record['name']!r} into "
                f"{len(adapter_record['layers'])} projections")
        context = min(max_context or DEFAULT_MAX_CONTEXT, ck.config.max_position_embeddings)
        if max_context is not None and max_context > ck.config.max_position_embeddings:
            raise BadInputError(f"--max-context {max_context} exceeds the model's context "
                                f"length {ck.config.max_position_embeddings}")
        tokenizer = _tokenizer(ck)
        # Read and tokenized at most once: the size plan, GPTQ and each other adapter's
        # GPTQ cut their windows from it.
        text = functools.cache(lambda: calibrate.calibration_text(tokenizer, calibration))
        names = None if head == "separate" else [
            p.name for p in llm_graph.projections(ck.config) if p.name != "lm_head"]
        plan = None
        if max_size is not None:
            planned = [p.name for p in llm_graph.projections(ck.config)
                       if (names is None or p.name in names)
                       and choose_bits(p, policy.bits, policy.keep, {}) is not None]
            plan = llm_plan.plan_decoder(ck, planned, max_size, widths, policy.group_size,
                                         policy.symmetric, text, context,
                                         table_dtype, table_bits, head, say)
            overrides = dict(plan.bits)
            if requested == "auto" and quantizer == "gptq" and calibration is None \
                    and calibration_tokens is None and min(overrides.values(), default=4) \
                    > GPTQ_AUTO_MAX_BITS:
                quantizer, quantize_fn = "rtn", _quantizer("rtn")[1]  # all 4-bit: rtn
        calibrated = None
        if quantize_fn is None:
            calibrated = _calibrate(ck, policy, overrides, text, calibration_tokens, say,
                                    names)
        widths_said = "the planned widths" if plan else f"{policy.bits} bits"
        say(f"quantizing {ck.config.num_layers} layers to {widths_said} ({quantizer})")
        weights, records, quantized = _quantize(
            ck, policy, overrides, quantize_fn, say, names,
            prepared=None if calibrated is None else calibrated.tensors)
        if calibrated is not None:
            for record in records:
                if record["name"] in calibrated.errors:
                    record["calibration_error"] = round(calibrated.errors[record["name"]], 6)
        switching = llm_adapter.switchable_projections(tasks)
        if switching:
            say(f"{len(switching)} projections differ between the adapters: switchable")
        task_weights, task_calibration = _task_weights(
            tasks, switching, weights, policy, overrides, quantize_fn, say, calibrated,
            text, calibration_tokens, names)
        say("building the decoder graph")
        model = llm_graph.build_decoder(ck, weights, context, table_dtype, head=head,
                                        kv_dtype=kv_dtype)
        tables = _quantize_embedding(model, table_bits, say)
        if head == "shared":
            records.append(_shared_head_record(ck, tables))
        adapter_files = llm_adapter.adapter_tensors(task_weights)
        _mark_switchable(model, records, adapter_files)
        (stage / TOKENIZER_FILE).write_text(json.dumps(ck.tokenizer_json))
        say("writing reference data (fp32 graph and dequantized twin)")
        reference = _write_reference(stage, ck, model, quantized, tokenizer, context,
                                     table_dtype, kv_dtype)
        adapter_entries = _write_adapters(stage, tasks, task_weights, adapter_files, model,
                                          quantized, tokenizer, context, table_dtype,
                                          kv_dtype, say)
        _save(stage, model)  # last: saving moves the weights out of ``model``
        native_entries = ship_native(stage, native, say)
        manifest = _manifest(stage, ck, profile, policy, quantizer, model, records, reference,
                             embedding if tables or not table_bits else "float32", tables,
                             context, overrides, adapter_record, native_entries,
                             adapter_entries, head)
        if calibrated is not None:
            manifest["quantization"]["calibration"] = calibrated.record
            if task_calibration:  # the switchable projections' calibration, per adapter
                calibrated.record["shared_projections_under"] = next(iter(tasks))
                calibrated.record["adapters"] = task_calibration
        if plan is not None:
            manifest["quantization"]["plan"] = plan.to_manifest()
            manifest["reference"]["tolerance"]["vs_pytorch"] = TOLERANCE_VS_FP32[
                min(plan.bits.values(), default=4)]  # the narrowest planned width's
            if manifest["sizes"]["weight_bytes"] > max_size:
                raise RuntimeError(
                    f"the planned weights take {manifest['sizes']['weight_bytes']} bytes, "
                    f"over --max-size {max_size} (the plan counted {plan.weight_bytes}) — "
                    "an edgepet bug; please report it with the model")
        say("verifying the bundle against its dequantized graph")
        # The files were just written and hashed into the file table: verify the
        # in-memory bundle instead of reading and hashing them all again.
        measured = bundle_io.Bundle(stage, manifest).verify()
        bad = [r for r in measured if r.vs_quantized > TOLERANCE_VS_QUANTIZED]
        if bad:
            raise RuntimeError(
                "the exported decoder disagrees with its own dequantized graph (relative "
                f"logit error {bad[0].vs_quantized:.4f}, adapter {bad[0].adapter}) — this is "
                "an edgepet bug; please report it with the model")
        manifest["reference"]["measured"] = {(r.adapter or "default"): r.to_dict()
                                             for r in measured}
        write_manifest(stage, manifest)
    say(f"done in {time.perf_counter() - start:.1f} s")
    return bundle_io.Bundle(out, manifest)


def _zero_level(policy: QuantPolicy, bits: Bits | None) -> bool:
    """Whether a projection of ``bits`` gets zero-level codes: where the policy asks and
    the width has them (2, 3, 4 bits; a 1-bit or ternary ``layer_bits`` keeps its own)."""
    return policy.zero_level and bits in ZERO_LEVEL_BITS


#: ``edgepet export`` options a decoder export takes (the rest are refused when given).
_DECODER_OPTIONS = ("target", "bits", "group_size", "symmetric", "zero_level", "keep",
                    "quantizer",
                    "adapters", "overwrite", "progress", "op_library", "require_native",
                    "tied_head", "calibration", "calibration_tokens", "max_size", "kv_cache")
#: Options that mean nothing for a decoder and are ignored.
_IGNORED_OPTIONS = ("trust", "arch_kwargs", "allow_inaccurate")
#: Flag names of options whose key does not spell the flag.
_FLAGS = {"input_shapes": "--input-shape", "inputs": "--input"}


def is_decoder_source(model: Any) -> bool:
    """True for a GGUF file or a Hugging Face folder of a Llama-family decoder."""
    from edgepet.exporters.hf import is_encoder_folder

    return isinstance(model, (str, os.PathLike)) and ckpt.is_llm_source(model) \
        and not is_encoder_folder(model)


def export_decoder_options(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                           embedding_bits: int | str | None = "auto", **options: Any
                           ) -> bundle_io.Bundle:
    """:func:`export_decoder` called with ``edgepet export``'s options (those of
    ``edgepet.exporters.pipeline.export``); options decoders do not take are refused, and a
    step's ``ValueError`` (an unknown target, say) leaves as :class:`BadInputError`."""
    from edgepet.exporters.pipeline import _bad_input_at_the_boundary

    return _bad_input_at_the_boundary(_export_decoder_options)(
        model, out, embedding_bits=embedding_bits, **options)


def _export_decoder_options(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                            embedding_bits: int | str | None, **options: Any
                            ) -> bundle_io.Bundle:
    given = [_FLAGS.get(key, "--" + key.replace("_", "-")) for key, value in options.items()
             if key not in _DECODER_OPTIONS and key not in _IGNORED_OPTIONS and value]
    if given == ["--budget-error"]:
        raise BadInputError("--budget-error does not plan decoders: their per-projection "
                            "estimate ranks projections but is no output error a budget "
                            "could be set in — use --max-size SIZE (e.g. 105MB) for a "
                            "per-projection plan under a size bound")
    if given:
        raise BadInputError(f"decoder checkpoints (GGUF / Hugging Face folder) take no "
                            f"{', '.join(given)}")
    taken = {k: v for k, v in options.items() if k in _DECODER_OPTIONS}
    if embedding_bits not in (None, "auto"):
        taken["embedding"] = "float16" if embedding_bits in ("float", "none") \
            else embedding_bits
    return export_decoder(model, out, **taken)

# --- choices and quantization -------------------------------------------------------------


def _embedding_choice(embedding: str | int) -> tuple[str, int | None]:
    """(label, code bits or None) of an ``embedding`` argument: 4, 8, "float16", "float32"."""
    text = str(embedding).removesuffix("-bit")
    if text.isdigit() and int(text) in EMBEDDING_CODE_BITS:
        return f"{int(text)}-bit", int(text)
    if text in EMBEDDING_DTYPES:
        return text, None
    raise BadInputError(f"embedding storage {embedding!r} is unknown — use 4 or 8 (bits), "
                        f"{' or '.join(EMBEDDING_DTYPES)}")


def _quantize_embedding(model: onnx.ModelProto, bits: int | None, say: Progress
                        ) -> list[Any]:
    """The graph's embedding table as ``bits``-wide GatherBlockQuantized codes (in place)."""
    if bits is None:
        return []
    from edgepet.exporters.rewrite import quantize_embeddings

    tables = quantize_embeddings(model, bits, EMBEDDING_BLOCK, min_elements=0)
    if not tables:
        say(f"  the embedding table stays float32: its width is not a multiple of "
            f"{EMBEDDING_BLOCK}")
    for t in tables:
        say(f"  embedding table [{t.rows}, {t.dim}] -> {t.bits}-bit codes, "
            f"{t.stored_bytes / 1e6:.1f} MB (float32: {t.float_bytes / 1e6:.1f} MB)")
    return tables


def _check_max_size(max_size: int | None, bits: Bits | None,
                    layer_bits: Mapping[str, Bits] | None) -> tuple[int, ...]:
    """The widths a ``max_size`` plan chooses among (empty without a plan)."""
    if max_size is None:
        return ()
    if isinstance(max_size, bool) or int(max_size) <= 0:
        raise BadInputError(f"--max-size {max_size} must be a positive size, e.g. 105MB")
    if layer_bits is not None:
        raise BadInputError("max_size chooses every projection's width — give layer_bits "
                            "or max_size, not both")
    return llm_plan.widths_up_to(DEFAULT_BITS if bits is None else bits)


def _check_layer_bits(layer_bits: Mapping[str, Any]) -> dict[str, Bits]:
    checked: dict[str, Bits] = {}
    for pattern, value in layer_bits.items():
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value not in SUPPORTED_BITS or isinstance(value, bool):
            raise BadInputError(f"bits {value!r} for {pattern!r} is not supported — use 1, 2, "
                                "3, 4 or ternary")
        checked[pattern] = value
    return checked


def choose_bits(projection: llm_graph.Projection, default: Bits, keep: Sequence[str],
                overrides: Mapping[str, Bits]) -> Bits | None:
    """Bits of one projection: None when kept, else the first matching override or default."""
    if any(projection.matches(p) for p in keep):
        return None
    for pattern, value in overrides.items():
        if projection.matches(pattern):
            return value
    return default


#: Widths at or below which ``--quantizer auto`` calibrates (GPTQ) a decoder: the table in
#: docs/llm.md.
GPTQ_AUTO_MAX_BITS = 3


def _with_end_layers(overrides: Mapping[str, Bits], bits: Bits, layers: int
                     ) -> dict[str, Bits]:
    """``overrides`` plus the default 4-bit first/last layers for ``bits``
    (:data:`DEFAULT_END_LAYERS_AT_4_BITS`)."""
    ends = DEFAULT_END_LAYERS_AT_4_BITS.get(bits, 0)
    if not ends or layers < 4 * ends:
        return dict(overrides)
    picked = sorted({*range(ends), *range(layers - ends, layers)})
    return {**overrides, **{f"layers.{i}.*": 4 for i in picked}}


def auto_quantizer(quantizer: str, bits: Bits, calibration: Any = None,
                   calibration_tokens: int | None = None, adapters: int = 0) -> str:
    """The quantizer a decoder export uses: ``auto`` is gptq at <= 3 bits (ternary and 1
    bit included) or when calibration is given, rtn otherwise; calibration options with rtn
    or search are refused (they would be ignored). Several adapters change nothing: each
    one's switchable projections are calibrated with its own forward (``adapters`` is
    kept for callers that pass it)."""
    calibrating = calibration is not None or calibration_tokens is not None
    if quantizer not in ("auto", "rtn", "search", "gptq"):
        raise BadInputError(f"--quantizer {quantizer!r} is unknown — use auto, rtn, search "
                            "or gptq")
    if quantizer == "auto":
        low = bits == "ternary" or int(bits) <= GPTQ_AUTO_MAX_BITS
        return "gptq" if low or calibrating else "rtn"
    if calibrating and quantizer != "gptq":
        raise BadInputError(f"--calibration and --calibration-tokens feed --quantizer gptq, "
                            f"not {quantizer} — drop them or use --quantizer gptq")
    return quantizer


def _calibrate(ck: ckpt.Checkpoint, policy: Any, overrides: Mapping[str, Bits],
               text: Callable[[], calibrate.CalibrationText], calibration_tokens: int | None,
               say: Progress, names: Collection[str] | None = None):
    """GPTQ codes for every quantized projection (of ``names``; None: all), with the
    manifest's calibration record; ``text`` gives the tokenized calibration text."""
    data = calibrate.windows_of(text(), calibration_tokens)
    say(f"calibrating on {data.tokens} tokens ({data.record['source']}, "
        f"{len(data.windows)} windows of <= {data.record['ctx']}): GPTQ layer by layer")

    def choose(proj: llm_graph.Projection) -> Any:
        bits = None if names is not None and proj.name not in names else choose_bits(
            proj, policy.bits, policy.keep, overrides)
        return calibrate.Choice(bits, policy.group_size, policy.symmetric,
                                _zero_level(policy, bits))

    result = calibrate.gptq_checkpoint(ck, choose, data, progress=say)
    result.record = {"method": "gptq", "sequential": True, "damp": calibrate.DEFAULT_DAMP,
                     "clip_search": calibrate.DEFAULT_CLIP_SEARCH,
                     "seconds": round(result.seconds, 1),
                     "rtn_kept": len(result.rtn_kept), **data.record}
    if result.rtn_kept:
        say(f"  {len(result.rtn_kept)} of {len(result.errors)} projections keep round-to-"
            "nearest codes (no larger calibration error)")
    return result


def _quantize(ck: ckpt.Checkpoint, policy: Any, overrides: Mapping[str, Bits],
              quantize_fn: Callable[..., QuantizedTensor] | None, say: Progress,
              names: Collection[str] | None = None,
              prepared: Mapping[str, QuantizedTensor] | None = None):
    """Codes (or float, when kept) of the projections ``names`` (None: all); ``prepared``:
    codes made beforehand (GPTQ)."""
    weights: dict[str, llm_graph.Weight] = {}
    records: list[dict[str, Any]] = []
    quantized: dict[str, tuple[QuantizedTensor, None]] = {}
    projections = [p for p in llm_graph.projections(ck.config)
                   if names is None or p.name in names]
    for index, proj in enumerate(projections):
        w = proj.weight(ck)
        n, k = w.shape
        bits = choose_bits(proj, policy.bits, policy.keep, overrides)
        record = {"name": proj.name, "node": proj.name, "N": n, "K": k, "bits": bits,
                  "group_size": None, "symmetric": None, "bias": False,
                  "float_bytes": w.size * 4, "stored_bytes": w.size * 4, "switchable": False}
        if bits is None:
            weights[proj.name] = w
        else:
            try:
                qt = prepared[proj.name] if prepared is not None else quantize_fn(
                    w, bits, policy.group_size, policy.symmetric,
                    zero_level=_zero_level(policy, bits))
            except ValueError as error:
                raise BadInputError(f"quantizing {proj.name} failed: {error}") from None
            weights[proj.name] = qt
            quantized[proj.name] = (qt, None)
            record.update(group_size=qt.group_size, symmetric=qt.symmetric,
                          stored_bytes=qt.nbytes_packed())
            if qt.zero_level:
                record["zero_level"] = True
        records.append(record)
        if (index + 1) % max(1, len(projections) // 4) == 0:
            say(f"  {index + 1}/{len(projections)} projections ({proj.name})")
    return weights, records, quantized


# --- tokenizer and reference data ---------------------------------------------------------


def _tokenizer(ck: ckpt.Checkpoint):
    try:
        import tokenizers
    except ImportError:
        raise BadInputError("decoder bundles need the tokenizers package — pip install "
                            "'edgepet[llm]'") from None
    try:
        return tokenizers.Tokenizer.from_str(json.dumps(ck.tokenizer_json))
    except Exception as error:  # noqa: BLE001 — tokenizers raises plain Exception
        raise BadInputError(f"{ck.source}: the tokenizer cannot be read ({error})") from None


def _reference_feeds(ck: ckpt.Checkpoint, tokenizer: Any, kv_dtype: type
                     ) -> dict[str, np.ndarray]:
    ids = tokenizer.encode(REFERENCE_PROMPT, add_special_tokens=False).ids
    if ck.add_bos_token and ck.bos_token_id is not None:
        ids = [ck.bos_token_id, *ids]
    ids = [i for i in ids if i < ck.config.vocab_size][:32] or [0]
    return llm_graph.prefill_feeds(ck.config, ids, kv_dtype=kv_dtype)


def _run_plain(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import onnxruntime as ort

    from edgepet.runtime import session_options

    options = session_options()  # the decoder's fused ops are edgepet's
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds)), strict=True))


def _write_reference(stage: Path, ck: ckpt.Checkpoint, model: onnx.ModelProto,
                     quantized: Mapping[str, Any], tokenizer: Any, context: int,
                     embedding_dtype: type, kv_dtype: type, task: str | None = None
                     ) -> dict[str, str]:
    """Reference data: the fp32 graph's and the dequantized twin's logits on a fixed
    prompt; ``task`` (an adapter other than the first) names files of its own."""
    folder = stage / bundle_io.REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    feeds = _reference_feeds(ck, tokenizer, kv_dtype)
    suffix = "" if task is None else f".{task}"
    if task is None:
        np.savez(folder / "inputs.npz", **feeds)
    fp32 = llm_graph.build_decoder(ck, llm_graph.float_weights(ck), context, embedding_dtype,
                                   kv_dtype=kv_dtype)
    np.savez(folder / f"outputs{suffix}.npz", **_run_plain(fp32, feeds))
    del fp32
    twin = dequantized_twin(model, quantized)
    if any(n.op_type == "MatMulNBits" for n in twin.graph.node):
        codes, scales, zeros = (_initializer(model, name)
                                for name in llm_graph.shared_head_tensors())
        llm_graph.float_shared_head(twin, llm_graph.dequantize_table(codes, scales, zeros))
    np.savez(folder / f"quantized_outputs{suffix}.npz", **_run_plain(twin, feeds))
    return {"inputs": "reference/inputs.npz", "outputs": f"reference/outputs{suffix}.npz",
            "quantized_outputs": f"reference/quantized_outputs{suffix}.npz"}


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# --- writing ------------------------------------------------------------------------------


def _save(stage: Path, model: onnx.ModelProto) -> None:
    onnx.save_model(model, str(stage / bundle_io.MODEL), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=bundle_io.EXTERNAL_DATA,
                    size_threshold=1024)


def _manifest(stage: Path, ck: ckpt.Checkpoint, profile: TargetProfile, policy: Any,
              quantizer: str, model: onnx.ModelProto, records: list[dict[str, Any]],
              reference: dict[str, str], embedding: str, tables: list[Any], context: int,
              overrides: Mapping[str, Bits], adapter: dict[str, Any] | None,
              native: Mapping[str, Any], adapter_entries: list[dict[str, Any]],
              head: str) -> dict[str, Any]:
    import onnxruntime as ort

    from edgepet.exporters.onnx import OP_VERSION
    from edgepet.kernels import LAYOUT

    float_bytes = sum(int(w.size) * 4 for w in ck.weights.values())
    switched = {n for entry in adapter_entries for n in entry["parameters"]}
    weight_bytes = initializer_bytes(model)
    target = profile.to_dict()
    target["threads"] = profile.threads
    c = ck.config
    manifest = {
        "schema": manifest_schema.SCHEMA_ID,
        "schema_version": manifest_schema.SCHEMA_VERSION,
        "kind": "decoder",
        "edgepet_version": edgepet.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "quantization": {
            "bits": policy.bits, "group_size": policy.group_size,
            "symmetric": policy.symmetric, "quantizer": quantizer, "keep": list(policy.keep),
            **({"zero_level": True} if policy.zero_level else {}),
            "embeddings": ({
                "op": "com.microsoft.GatherBlockQuantized", "bits": tables[0].bits,
                "block_size": EMBEDDING_BLOCK, "tables": [t.to_dict() for t in tables],
            } if tables else None),
        },
        "operator": {
            "domain": "ai.edgepet", "op_type": "LutMatMul", "version": OP_VERSION,
            "layout": LAYOUT, "abi_version": bundle_io.op_abi_version(),
            "library": native["library"], "runner": native["runner"],
            "missing": native["missing"],
        },
        "model": {
            "file": bundle_io.MODEL, "external_data": bundle_io.EXTERNAL_DATA,
            "opset": llm_graph.OPSET, "ir_version": model.ir_version,
        },
        "inputs": [value_info(v) for v in model.graph.input if v.name not in switched],
        "outputs": [value_info(v) for v in model.graph.output],
        "layers": records,
        "adapters": adapter_entries,
        "reference": {
            **reference,
            "tolerance": {"vs_pytorch": TOLERANCE_VS_FP32[policy.bits],
                          "vs_quantized": TOLERANCE_VS_QUANTIZED},
        },
        "decoder": {
            "architecture": "llama",
            "name": ck.name,
            "config": c.to_dict(),
            "max_context": context,
            "tokenizer": TOKENIZER_FILE,
            "chat_template": ck.chat_template,
            "bos_token_id": ck.bos_token_id,
            "eos_token_ids": ck.eos_token_ids,
            "add_bos_token": ck.add_bos_token,
            **({} if tables else {"embedding": embedding}),
            "layer_bits": {k: v for k, v in overrides.items()},
            "head": _head_manifest(c, head),
            "cache": {"past": "past.{i}.key|value", "present": "present.{i}.key|value",
                      "layout": "batch, kv_heads, capacity, head_dim",
                      "dtype": _cache_dtype(model),
                      "past_length": llm_graph.PAST_LENGTH},
        },
        "sizes": {
            "float_weight_bytes": float_bytes,
            "weight_bytes": weight_bytes,
            "linear_float_bytes": sum(r["float_bytes"] for r in records),
            "linear_stored_bytes": sum(r["stored_bytes"] for r in records
                                       if not r.get("shared_with")),
            "adapter_bytes": sum(e["bytes"] for e in adapter_entries),
            "bundle_bytes": 0,
            "compression": round(float_bytes / max(weight_bytes, 1), 3),
        },
        "files": {},
        "provenance": {
            "source": ck.source,
            "source_kind": ck.source_kind,
            "source_sha256": (bundle_io.sha256_file(Path(ck.source))
                              if Path(ck.source).is_file() else None),
            "source_quantization": ck.source_quantization,
            "torch_version": _torch_version(),
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
            "host": f"{platform.system()} {platform.machine()} python {sys.version.split()[0]}",
            **({"adapter": adapter} if adapter and adapter.get("merged") else {}),
            **({"adapters": adapter["tasks"]} if adapter and not adapter.get("merged")
               else {}),
        },
    }
    (stage / bundle_io.SCHEMA_COPY).write_text(manifest_schema.SCHEMA_FILE.read_text())
    manifest["files"] = bundle_writer.file_table(stage)
    manifest["sizes"]["bundle_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    return manifest


# --- the tied head and switchable adapters -----------------------------------------------


def _head_choice(tied_head: str, ck: ckpt.Checkpoint, table_bits: int | None, policy: Any,
                 overrides: Mapping[str, Bits]) -> str:
    """``tied_head`` checked against the model and the other choices."""
    if tied_head == "separate":
        return "separate"
    head = next(p for p in llm_graph.projections(ck.config) if p.name == "lm_head")
    bits = choose_bits(head, policy.bits, policy.keep, overrides)
    if not ck.config.tie_word_embeddings:
        raise BadInputError(f"--tied-head shared: {ck.name or ck.source} has an output head "
                            "of its own (tie_word_embeddings is false), there is no table to "
                            "share — leave --tied-head out")
    if table_bits != llm_graph.SHARED_HEAD_BITS:
        raise BadInputError("--tied-head shared reads the embedding table's 4-bit codes, but "
                            f"the table is stored as {table_bits or 'float'} — use "
                            "--embedding-bits 4, or --tied-head separate")
    if bits != llm_graph.SHARED_HEAD_BITS:
        raise BadInputError(f"--tied-head shared gives the head the table's 4-bit codes, but "
                            f"the head is asked to be {bits or 'float'} (--keep / layer bits) "
                            "— use --tied-head separate for that")
    return "shared"


def _shared_head_record(ck: ckpt.Checkpoint, tables: list[Any]) -> dict[str, Any]:
    """The layer record of a shared head: the table's codes, read by MatMulNBits."""
    c = ck.config
    if not tables:
        raise RuntimeError("the shared head has no quantized embedding table — an edgepet "
                           "bug; export with --tied-head separate and report it")
    return {"name": "lm_head", "node": "lm_head", "N": c.vocab_size, "K": c.hidden_size,
            "bits": llm_graph.SHARED_HEAD_BITS, "group_size": llm_graph.SHARED_HEAD_BLOCK,
            "symmetric": False, "bias": False, "float_bytes": c.vocab_size * c.hidden_size * 4,
            "stored_bytes": tables[0].stored_bytes, "switchable": False,
            "shared_with": llm_graph.TABLE}


def _cache_dtype(model: onnx.ModelProto) -> str:
    """The KV cache's element type in ``model`` ("float16" or "float32")."""
    first = llm_graph.past_names(0)[0]
    elem = next(i.type.tensor_type.elem_type for i in model.graph.input if i.name == first)
    return onnx.helper.tensor_dtype_to_np_dtype(elem).name


def _head_manifest(c: ckpt.LlamaConfig, head: str) -> dict[str, Any]:
    if head == "shared":
        return {"tied": True, "storage": "shared", "op": "com.microsoft.MatMulNBits",
                "reads": list(llm_graph.shared_head_tensors()), "accuracy_level": 4}
    return {"tied": bool(c.tie_word_embeddings), "storage": "separate",
            "op": "ai.edgepet.LutMatMul"}


def _task_weights(tasks: Mapping[str, ckpt.Checkpoint], switching: Collection[str],
                  weights: Mapping[str, llm_graph.Weight], policy: Any,
                  overrides: Mapping[str, Bits],
                  quantize_fn: Callable[..., QuantizedTensor] | None, say: Progress,
                  calibrated: calibrate.CalibratedWeights | None = None,
                  text: Callable[[], calibrate.CalibrationText] | None = None,
                  calibration_tokens: int | None = None,
                  names: Collection[str] | None = None,
                  ) -> tuple[dict[str, dict[str, llm_graph.Weight]], dict[str, dict[str, Any]]]:
    """Adapter -> its weights of the switchable projections (the first adapter's are the
    graph's own; the others are quantized here the same way), and with GPTQ, adapter -> the
    record of what calibrated its switchable projections.

    GPTQ: the shared projections were calibrated once, under the first adapter — the graph's
    default, what runs when no adapter is set. Each other adapter's switchable projections
    are calibrated with that adapter's forward, sequentially as the first's were, on the
    same text, the shared projections' codes in place (the bundle runs those).
    """
    if not switching:
        return {}, {}
    out: dict[str, dict[str, llm_graph.Weight]] = {}
    records: dict[str, dict[str, Any]] = {}
    data = None
    for index, (task, task_ck) in enumerate(tasks.items()):
        if index == 0:
            out[task] = {name: weights[name] for name in switching}
            if calibrated is not None:
                records[task] = _task_record(calibrated, switching, calibrated.seconds)
            continue
        if quantize_fn is not None:
            say(f"quantizing adapter {task!r}'s {len(switching)} switchable projections")
            own, _, _ = _quantize(task_ck, policy, overrides, quantize_fn, lambda _: None,
                                  switching)
            out[task] = own
            continue
        assert calibrated is not None
        if data is None:
            data = calibrate.windows_of(text(), calibration_tokens)
        say(f"calibrating adapter {task!r}'s {len(switching)} switchable projections "
            "(GPTQ, its own forward)")
        shared = {n: qt for n, qt in calibrated.tensors.items() if n not in switching}

        def choose(proj: llm_graph.Projection) -> calibrate.Choice:
            wanted = proj.name in switching and (names is None or proj.name in names)
            bits = choose_bits(proj, policy.bits, policy.keep, overrides) if wanted else None
            return calibrate.Choice(bits, policy.group_size, policy.symmetric,
                                    _zero_level(policy, bits))

        result = calibrate.gptq_checkpoint(task_ck, choose, data, fixed=shared)
        own: dict[str, llm_graph.Weight] = {}
        for proj in llm_graph.projections(task_ck.config):
            if proj.name in switching:
                own[proj.name] = result.tensors.get(proj.name, proj.weight(task_ck))
        out[task] = own
        records[task] = _task_record(result, switching, result.seconds)
        say(f"  adapter {task!r}: {len(result.tensors)} projections calibrated in "
            f"{result.seconds:.0f} s")
    return out, records


def _task_record(result: calibrate.CalibratedWeights, switching: Collection[str],
                 seconds: float) -> dict[str, Any]:
    """An adapter's ``calibration`` entry: its switchable projections' errors."""
    return {"method": "gptq",
            "errors": {n: round(result.errors[n], 6) for n in switching if n in result.errors},
            "rtn_errors": {n: round(result.rtn_errors[n], 6) for n in switching
                           if n in result.rtn_errors},
            "seconds": round(seconds, 1)}


def _mark_switchable(model: onnx.ModelProto, records: list[dict[str, Any]],
                     adapter_files: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """List the switchable tensors as graph inputs (the first adapter's values stay their
    defaults) and mark their layers in the manifest's records."""
    from edgepet.exporters.rewrite import make_overridable

    names = sorted({n for tensors in adapter_files.values() for n in tensors})
    make_overridable(model, names)
    switched = {n.rsplit(".", 1)[0] for n in names}
    for record in records:
        record["switchable"] = record["node"] in switched


def _write_adapters(stage: Path, tasks: Mapping[str, ckpt.Checkpoint],
                    task_weights: Mapping[str, Mapping[str, llm_graph.Weight]],
                    adapter_files: Mapping[str, Mapping[str, np.ndarray]],
                    model: onnx.ModelProto, quantized: Mapping[str, Any], tokenizer: Any,
                    context: int, table_dtype: type, kv_dtype: type, say: Progress
                    ) -> list[dict[str, Any]]:
    """``adapters/NAME.onnx_adapter`` per adapter and its reference data (the first
    adapter's reference is the bundle's own)."""
    from edgepet.exporters.adapters import TaskAdapter, write_adapters

    if not adapter_files:
        return []
    say(f"writing {len(adapter_files)} adapter files and their reference data")
    entries = write_adapters(stage, {task: TaskAdapter(dict(tensors), {})
                                     for task, tensors in adapter_files.items()})
    for index, entry in enumerate(entries):
        task = entry["name"]
        if index == 0:
            entry.update(reference_outputs=None, quantized_outputs=None)
            continue
        own = dict(quantized)
        own.update({name: (w, None) for name, w in task_weights[task].items()
                    if isinstance(w, QuantizedTensor)})
        graph = model if all(isinstance(w, QuantizedTensor)
                             for w in task_weights[task].values()) \
            else _with_tensors(model, adapter_files[task])  # a kept (float) one switches
        files = _write_reference(stage, tasks[task], graph, own, tokenizer, context,
                                 table_dtype, kv_dtype, task)
        entry.update(reference_outputs=files["outputs"],
                     quantized_outputs=files["quantized_outputs"])
    return entries


def _with_tensors(model: onnx.ModelProto, tensors: Mapping[str, np.ndarray]
                  ) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers ``tensors`` hold other values."""
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name in tensors:
            t.CopyFrom(numpy_helper.from_array(tensors[t.name], t.name))
    return copy


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        return "not installed"
    return torch.__version__


__all__ = ["TOLERANCE_VS_FP32", "choose_bits", "export_decoder", "export_decoder_options",
           "is_decoder_source"]
