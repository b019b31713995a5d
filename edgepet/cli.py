"""The ``edgepet`` command: export, run, inspect, verify, bench, generate, perplexity,
targets, demo.

Exit codes: 0 success, 2 bad input (the message says what failed, why and what to do),
3 ``verify`` (or ``demo``) measured an error beyond the bundle's tolerance, 1 internal
error (a bug in edgepet). Third-party logging and warnings (torch's, ONNX Runtime's) stay
off the terminal unless ``EDGEPET_DEBUG=1``.
Only ``export`` and ``demo`` import torch; the other commands run on a device that has
numpy, onnx, onnxruntime and the edgepet op library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_VERIFY_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
edgepet turns a PyTorch model tuned with parameter-efficient methods (LoRA, Bone,
adapters, 1-bit adapters) into a bundle whose linear layers run at 1-4 bits through
ONNX Runtime and edgepet's LUT kernels, and runs that bundle on edge CPUs.

typical session:
  edgepet demo                                   # export, run and verify a small example
  edgepet targets                                # the CPUs edgepet builds for
  edgepet export model.pt2 --target rpi5 -o out/ # a torch.export program -> bundle
  edgepet inspect out/                           # layers, bits, bytes, compression
  edgepet run out/ --input x.npy --output y.npz  # run it
  edgepet verify out/                            # error against PyTorch on reference data

exit codes:
  0  success
  1  internal error: a bug in edgepet (EDGEPET_DEBUG=1 prints the traceback)
  2  bad input: a file, option or bundle edgepet cannot use; the message names it and
     says what to do
  3  verify (or demo) measured an error beyond the tolerance the bundle records
  130  interrupted (Ctrl-C)

a bundle's own op library (lib/) is code: it is loaded only when the installed edgepet
has none for this CPU, its SHA-256 matches the manifest, and you pass
--trust-bundle-library (apps: EDGEPET_TRUST_BUNDLE_LIBRARY=1). inspect and
verify --dry-run load no library at all.
"""

_EXPORT_EPILOG = """\
model files:
  model.pt2                   torch.export.save(torch.export.export(model, args), ...)
  model.ts / model.pt         torch.jit.save(torch.jit.trace(model, args), ...)
  weights.pt --arch PKG.MOD:Class [--arch-kwargs '{"dim": 64}']
                              a state dict (torch.save(model.state_dict()) or .safetensors)
  model.pt --trust            a pickled nn.Module (torch.save(model)); unpickling runs code
  FOLDER                      a Hugging Face encoder folder (config.json, model.safetensors
                              or pytorch_model.bin, tokenizer files): BERT, MiniLM, RoBERTa,
                              DistilBERT, ... with --task feature-extraction|sentence-
                              embedding|text-classification (default: read off the folder)
  --hf NAME_OR_PATH           the same, by name from the local Hugging Face cache (never
                              downloaded)
  (none)                      the built-in example (--example mlp|vit|llama, default llama)

accuracy: export measures the bundle on its reference inputs (--calibration FILE: text lines
  or an .npz; default: sample English sentences for text models, random values otherwise)
  with the metric that fits the output (embedding cosine and top-5 retrieval overlap,
  top-1 agreement and KL for >= 16 logits, relative L2 otherwise) and refuses (exit 2,
  nothing written) a bundle beyond its tolerance unless --allow-inaccurate.

adapters (--adapter NAME=PATH, repeatable; PATH: a PEFT folder or a state-dict file):
  one adapter merges into the model; several stay switchable at run time
  (adapters/NAME.onnx_adapter; `edgepet run OUT --adapter NAME`).
  A model carrying binarized 1-bit adapters (edgepet.pet.binarize) keeps them as
  exact 1-bit LutMatMul layers with an adapter file of their own.

examples:
  edgepet export model.pt2 --target rpi5 -o bundle/
  edgepet export weights.safetensors --arch mypkg.net:Net --bits 2 --keep lm_head -o b/
  edgepet export weights.pt --arch mypkg.net:Net --adapter sst2=runs/sst2 \\
                 --adapter mnli=runs/mnli -o b/
  edgepet export model.ts --input-shape 1,3,224,224 -o b/
  edgepet export ./all-MiniLM-L6-v2 --task sentence-embedding -o minilm/
  edgepet run minilm/ --text "a first sentence" --text "another one" --output y.npz
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgepet", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from edgepet import __version__

    parser.add_argument("--version", action="version", version=f"edgepet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    export = sub.add_parser(
        "export", help="export a PyTorch model into a bundle",
        description="Quantize a (tuned) PyTorch model's linear layers to 1-4 bits, export it "
                    "to ONNX with ai.edgepet.LutMatMul nodes, and write a verified bundle.",
        epilog=_EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _export_arguments(export)

    demo = sub.add_parser(
        "demo", help="export, run and verify the built-in example (well under a minute)",
        description="Export a small built-in model, run it through the LUT kernels, verify "
                    "it against PyTorch and print the summary.",
    )
    demo.add_argument("--example", default="llama", choices=("mlp", "vit", "llama"),
                      help="which example model (default: llama, a 2-layer decoder)")
    demo.add_argument("--target", help="target profile (default: this machine)")
    demo.add_argument("--bits", help="1, 2, 3, 4 or ternary (default: the target's)")
    demo.add_argument("-o", "--output", help="keep the bundle here (default: a temp folder)")

    run = sub.add_parser(
        "run", help="run a bundle on inputs from .npy/.npz, or on text",
        description="Run a bundle. Inputs: one .npy (single-input models) or an .npz with "
                    "an array per input name (see `edgepet inspect`); a bundle exported "
                    "from a Hugging Face text model also takes text (--text, --text-file), "
                    "tokenized with the tokenizer it carries.",
    )
    run.add_argument("bundle", help="bundle folder")
    run.add_argument("--input", help="x.npy or x.npz")
    run.add_argument("--text", action="append", default=[],
                     help="a text input (repeatable; one output row per text)")
    run.add_argument("--text-file", help="a UTF-8 file with one text input per line")
    run.add_argument("--adapter", help="task adapter to use (see `edgepet inspect`)")
    run.add_argument("--output", help="write the outputs to this .npz")
    run.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    _trust_library_argument(run)

    inspect = sub.add_parser("inspect", help="layers, bits, bytes, compression, target, ABI")
    inspect.add_argument("bundle", help="bundle folder")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")

    verify = sub.add_parser(
        "verify", help="run reference/ and report the error against PyTorch",
        description="Run the bundle's reference inputs (for every adapter) and compare with "
                    "the fp32 PyTorch outputs and with the dequantized graph. Exit code 3 "
                    "when an error exceeds the tolerance recorded in the manifest.",
    )
    verify.add_argument("bundle", help="bundle folder")
    verify.add_argument("--threads", type=int, help="intra-op threads")
    verify.add_argument("--dry-run", action="store_true",
                        help="check the manifest, paths, sizes, hashes and operator ABI only: "
                             "load no library, run nothing")
    _trust_library_argument(verify)
    verify.add_argument("--json", action="store_true", help="print results as JSON")

    targets = sub.add_parser("targets", help="list the target profiles")
    targets.add_argument("--json", action="store_true", help="print the profiles as JSON")

    from edgepet.device_tests.cli import DESCRIPTION, EPILOG, add_arguments

    bench = sub.add_parser("bench", help="benchmark a bundle against ONNX Runtime and LiteRT "
                           "baselines: speed, memory, energy, accuracy (docs/bench.md)",
                           description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(bench)
    _llm_parsers(sub)
    return parser


def _trust_library_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-bundle-library", action="store_true", default=None,
                   help="when the installed edgepet has no op library for this CPU, load the "
                        "one the bundle ships (it is code; its SHA-256 must match the "
                        "manifest). Apps: EDGEPET_TRUST_BUNDLE_LIBRARY=1")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file or Hugging Face folder (see below); "
                                            "omit for the example")
    p.add_argument("--hf", metavar="NAME_OR_PATH",
                   help="a Hugging Face encoder: a local folder or a name in the local cache "
                        "(nothing is downloaded)")
    p.add_argument("--task", choices=("feature-extraction", "sentence-embedding",
                                      "text-classification"),
                   help="what a Hugging Face encoder's bundle outputs: hidden states, a "
                        "pooled L2-normalized sentence embedding, or class logits (default: "
                        "sentence-embedding for sentence-transformers folders, "
                        "text-classification for ...ForSequenceClassification, else "
                        "feature-extraction)")
    p.add_argument("--calibration", metavar="FILE",
                   help="real reference inputs: a text file (one input per line) for text "
                        "models, or an .npz of arrays by input name; for decoders, the text "
                        "file --quantizer gptq calibrates on")
    p.add_argument("--allow-inaccurate", action="store_true",
                   help="write the bundle even when it misses its accuracy tolerance")
    p.add_argument("-o", "--output", help="bundle folder to write (default: MODEL.edgepet, "
                                          "or edgepet-example for the example)")
    p.add_argument("--target", help="target profile, see `edgepet targets` (default: this "
                                    "machine's)")
    p.add_argument("--bits", help="weight bits: 1, 2, 3, 4 or ternary (default: the target's)")
    p.add_argument("--group-size", help="inputs per scale: a multiple of 32 or per-row "
                                        "(default: the target's)")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric codes (--no-symmetric: a zero point per group; default: "
                        "asymmetric for Hugging Face text models and GGUF/Hugging Face "
                        "decoders, symmetric otherwise)")
    p.add_argument("--zero-level", action="store_true",
                   help="symmetric codes with a zero level, s*(q - 2^(b-1)), the grid of "
                        "llama.cpp's Q4_0 and ONNX Runtime's symmetric MatMulNBits, instead "
                        "of odd levels: 2, 3 and 4 bits, no zero points stored")
    p.add_argument("--budget-error", type=float, metavar="X",
                   help="mixed precision by measurement: quantize each linear layer alone, "
                        "measure the output error it adds (1 - cosine for embeddings, "
                        "relative L2 otherwise), and give the most sensitive layers group 32 "
                        "asymmetric or float until the estimate is within X (e.g. 0.01); "
                        "not for decoders (use --max-size)")
    p.add_argument("--max-size", metavar="SIZE",
                   help="mixed precision under a size bound for all weights, e.g. 20MB: "
                        "least sensitive layers go down to 3 and 2 bits first (decoders: "
                        "per projection, measured on calibration text; docs/llm.md)")
    p.add_argument("--embedding-bits", choices=("4", "8", "float"),
                   help="store large embedding tables as 4- or 8-bit codes "
                        "(com.microsoft.GatherBlockQuantized) or float (default: 4 for "
                        "Hugging Face text models, float otherwise)")
    p.add_argument("--tied-head", choices=("separate", "shared"), default=None,
                   help="decoders whose output head is tied to the embeddings: separate "
                        "(default) stores the head as a LutMatMul of its own; shared reads "
                        "the 4-bit embedding codes (com.microsoft.MatMulNBits): a smaller "
                        "file, a higher perplexity (docs/llm.md)")
    p.add_argument("--kv-cache", choices=("float16", "float32"), default=None,
                   help="decoders: the KV cache's storage, float16 (default: half the bytes "
                        "a decode step reads per cached position, as llama.cpp's f16 cache) "
                        "or float32 (exact)")
    p.add_argument("--keep", action="append", default=[], metavar="PATTERN",
                   help="leave layers matching this name pattern in float (fnmatch, e.g. "
                        "lm_head or 'layers.0.*'); repeatable")
    p.add_argument("--quantizer", default="auto", choices=("auto", "rtn", "search", "gptq"),
                   help="rtn: round to nearest; search: error-minimizing clip/scale per "
                        "group; gptq (decoders): calibrated, column by column with error "
                        "feedback (default auto: search; decoders: gptq at <= 3 bits, else "
                        "rtn)")
    p.add_argument("--calibration-tokens", type=int, metavar="N",
                   help="decoders, --quantizer gptq: calibration tokens (default 8192) from "
                        "--calibration FILE (a text file) or the default text (Python "
                        "standard-library docstrings)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]PATH",
                   help="a task's adapter: PEFT folder or state-dict file; repeatable")
    p.add_argument("--input-shape", action="append", default=[], metavar="[DTYPE:]D0,D1,..",
                   help="shape of a model input, e.g. 1,3,224,224 or int64:1,32; repeatable "
                        "(default: inferred from the model)")
    p.add_argument("--input", dest="example_input", metavar="FILE",
                   help="example/reference inputs (.npy or .npz) instead of --input-shape")
    p.add_argument("--arch", help="package.module:Class that builds the model of a state dict")
    p.add_argument("--arch-kwargs", help="JSON object of keyword arguments for --arch")
    p.add_argument("--trust", action="store_true",
                   help="run code from the model file: unpickle a pickled nn.Module or .pt2 "
                        "parts, a TorchScript __setstate__, graph calls to file or non-torch "
                        "operators (only for files you trust)")
    p.add_argument("--example", choices=("mlp", "vit", "llama"),
                   help="export a built-in example model instead of MODEL")
    p.add_argument("--op-library", metavar="PATH",
                   help="ship this op library (built for the target, e.g. cross-compiled "
                        "libedgepet_ort.so for aarch64) in the bundle's lib/")
    p.add_argument("--require-native", action="store_true",
                   help="fail (exit 2) when the op library or edgepet-run for the target's "
                        "platform cannot be shipped, instead of a warning and a manifest "
                        "that says what is missing")
    p.add_argument("--with-tflite", action="store_true",
                   help="also convert the float model to baselines/model.tflite with "
                        "litert-torch, for `edgepet bench`'s litert baseline (needs "
                        "pip install litert-torch)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle (its reports/ move into the new one; a "
                        "folder holding anything else is refused, never emptied)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


class _Usage(Exception):
    """Bad command-line input found by the CLI itself (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgepet`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    from edgepet.runtime.errors import BadInputError

    handler = {"export": _cmd_export, "demo": _cmd_demo, "run": _cmd_run,
               "inspect": _cmd_inspect, "verify": _cmd_verify, "targets": _cmd_targets,
               "bench": _cmd_bench, "generate": _cmd_generate,
               "perplexity": _cmd_perplexity}
    try:
        with _third_party_quiet():
            return handler[args.command](args)
    except (BadInputError, _Usage) as error:
        print(f"edgepet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        if error.filename is None:
            return _internal(args.command, error)
        # A file the user named, or the system around it (permissions, a full disk).
        print(f"edgepet {args.command}: error: {error.filename}: "
              f"{error.strerror or error} — check that the path exists and that you may "
              "read and write there", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # not a bug: the shell's code for SIGINT
        print("edgepet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 — the last line of defence
        return _internal(args.command, error)


def _internal(command: str, error: Exception) -> int:
    if os.environ.get("EDGEPET_DEBUG"):
        traceback.print_exception(error)
    print(f"edgepet {command}: internal error: {type(error).__name__}: {error}\n"
          "  this is a bug in edgepet — rerun with EDGEPET_DEBUG=1 for the traceback and "
          "report it", file=sys.stderr)
    return EXIT_INTERNAL


@contextlib.contextmanager
def _third_party_quiet() -> Iterator[None]:
    """Keep other libraries' logging and warnings off the terminal (EDGEPET_DEBUG=1: let
    them through). edgepet reports every handled error in its own words; torch logs a
    traceback as a warning for some files it cannot read, and has handlers of its own, so
    records are dropped for every logger, not just the root's."""
    if os.environ.get("EDGEPET_DEBUG"):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


# --- export and demo -----------------------------------------------------------------------


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _adapters(specs: list[str]) -> dict[str, str] | None:
    if not specs:
        return None
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name or "adapter", spec
        if name in adapters:
            raise _Usage(f"--adapter name {name!r} is given twice — name each task once")
        adapters[name] = path
    return adapters


def _example_inputs(path: str | None) -> list | None:
    if path is None:
        return None
    import numpy as np

    arrays = _read_arrays(path)
    return [np.asarray(a) for a in arrays.values()]


def _read_arrays(path: str) -> dict[str, Any]:
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise _Usage(f"input file {path} does not exist")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return {"": np.load(file, allow_pickle=False)}
    except (ValueError, OSError, EOFError) as error:
        raise _Usage(f"{path} is not a readable .npy/.npz file ({error}) — save inputs with "
                     "numpy.save or numpy.savez") from None


def _cmd_export(args: argparse.Namespace) -> int:
    from edgepet.exporters.torch_export import parse_arch_kwargs

    if sum(bool(x) for x in (args.model, args.example, args.hf)) > 1:
        raise _Usage("give one of MODEL, --hf or --example")
    if args.hf:
        from edgepet.exporters.hf import resolve

        args.model = str(resolve(args.hf))
    model = args.model or f"example:{args.example or 'llama'}"
    default_out = ((Path(args.model.rstrip("/")).stem or "model") + ".edgepet") if args.model \
        else "edgepet-example"
    bundle = _export(
        model, args.output or default_out, args, bits=args.bits,
        group_size=args.group_size, symmetric=args.symmetric, zero_level=args.zero_level,
        keep=args.keep, quantizer=args.quantizer, adapters=_adapters(args.adapter),
        input_shapes=args.input_shape or None,
        inputs=_example_inputs(args.example_input),
        trust=args.trust, arch=args.arch, arch_kwargs=parse_arch_kwargs(args.arch_kwargs),
        overwrite=args.force, op_library=args.op_library, task=args.task,
        calibration=args.calibration, calibration_tokens=args.calibration_tokens,
        allow_inaccurate=args.allow_inaccurate,
        budget_error=args.budget_error, max_size=_size(args.max_size),
        embedding_bits=args.embedding_bits or "auto", with_tflite=args.with_tflite,
        require_native=args.require_native, tied_head=args.tied_head,
        kv_cache=args.kv_cache,
    )
    print(summary(bundle))
    return EXIT_OK


def _size(text: str | None) -> int | None:
    """``20MB``, ``1.5GB``, ``800kB`` or plain bytes."""
    if text is None:
        return None
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not match:
        raise _Usage(f"--max-size {text!r} is not a size — e.g. 20MB, 1.5GB or 800kB")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


#: ``edgepet export`` options only decoders take (None when not given).
_DECODER_ONLY = ("tied_head", "kv_cache")


def _export(model: str, out: str, args: argparse.Namespace, **options: Any):
    from edgepet.exporters.llm.export import export_decoder_options, is_decoder_source
    from edgepet.exporters.pipeline import export

    # decoders (GGUF / HF Llama) take --adapter and --embedding-bits their own way; both
    # are the boundary that turns a step's ValueError into BadInputError (exit 2)
    decoder = is_decoder_source(model)
    for key in _DECODER_ONLY:  # given: passed on for decoders, refused for other models
        value = options.pop(key, None)
        if value is not None and not decoder:
            raise _Usage(f"--{key.replace('_', '-')} applies to decoder checkpoints (a GGUF "
                         "file or a Hugging Face Llama folder) — leave it out for this model")
        if value is not None:
            options[key] = value
    run = export_decoder_options if decoder else export
    if run is export:
        if options.pop("calibration_tokens", None) is not None:
            raise _Usage("--calibration-tokens is for decoder exports (GGUF / Hugging Face "
                         "Llama) with --quantizer gptq")
        if options.get("quantizer") == "gptq":
            raise _Usage("--quantizer gptq is for decoder exports (GGUF / Hugging Face "
                         "Llama); use rtn or search")
    return run(model, out, target=args.target, progress=_progress(args.quiet), **options)


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    args.quiet = False
    with tempfile.TemporaryDirectory(prefix="edgepet-demo-") as tmp:
        out = args.output or str(Path(tmp) / "bundle")
        bundle = _export(f"example:{args.example}", out, args, bits=args.bits,
                         overwrite=bool(args.output))
        session = bundle.session()
        inputs = bundle.reference_inputs()
        outputs = session.run(inputs)
        first = next(iter(outputs.values()))
        print(summary(bundle))
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
        values = np.array2string(first.ravel()[:4], precision=3)
        print(f"  ran         {shapes} -> {list(first.shape)}; first values {values}")
        results = bundle.verify()
        print(_verify_lines(results))
        if args.output:
            print(f"\nbundle kept in {out}; try: edgepet inspect {out}")
        return EXIT_OK if all(r.ok for r in results) else EXIT_VERIFY_FAILED


def _codes(record: dict) -> str:
    """How a manifest's quantization (or layer) record stores its codes, in words."""
    if record.get("zero_level"):
        return "symmetric with a zero level"
    return "symmetric" if record["symmetric"] else "asymmetric"


def summary(bundle) -> str:
    """A few lines that say what was exported, how small it is and how accurate."""
    m = bundle.manifest
    q, s, t = m["quantization"], m["sizes"], m["target"]
    lut = [layer for layer in m["layers"]
           if layer["bits"] is not None and not layer.get("shared_with")]
    kept = sum(layer["bits"] is None for layer in m["layers"])
    group = q["group_size"] or "per-row"
    lines = [
        f"edgepet bundle: {bundle.path}",
        f"  target      {t['name']} ({t['arch']}, {t['kernel']} kernel, {t['threads']} threads)",
        (f"  weights     {_bits(q['bits'])}, group {group}, "
         f"{_codes(q)}, {q['quantizer']} quantizer"),
        f"  layers      {len(lut)} LutMatMul, {kept} kept in float",
        (f"  size        weights {_mb(s['float_weight_bytes'])} fp32 -> "
         f"{_mb(s['weight_bytes'])} ({s['compression']:.2f}x smaller); bundle "
         f"{_mb(s['bundle_bytes'])} on disk"),
    ]
    if m["adapters"]:
        lines.append("  adapters    " + ", ".join(
            f"{a['name']} ({_mb(a['bytes'])})" for a in m["adapters"]))
    if m.get("text"):
        text = m["text"]
        pooling = f", {text['pooling']} pooling + L2" if text.get("pooling") else ""
        lines.append(f"  text        {text['task']}{pooling}; inputs "
                     f"{', '.join(text['inputs'])}; tokenizer {text['tokenizer'] or 'none'}")
    head = (m.get("decoder") or {}).get("head")
    if head:
        lines.append("  head        " + (
            f"tied, shared with the embedding table's 4-bit codes ({head['op']})"
            if head["storage"] == "shared" else
            f"{'tied, ' if head['tied'] else ''}stored separately ({head['op']})"))
    op = m["operator"]
    shipped = [f for f in (op.get("library"), op.get("runner")) if f]
    if shipped:
        lines.append(f"  native      {', '.join(shipped)} (for {t['name']})")
    for missing in op.get("missing") or []:
        lines.append(f"  missing     {missing['what']}: {missing['why']} — {missing['how']}")
    tflite = (m.get("baselines") or {}).get("tflite")
    if tflite:
        lines.append(f"  tflite      {tflite['file']} ({tflite['converter']}), for bench's "
                     "litert baseline")
    plan = q.get("plan")
    if plan:
        lines.append(f"  plan        {plan['summary']}")
    measured = m["reference"].get("measured", {})
    tol = m["reference"]["tolerance"]
    kind = m["reference"].get("inputs_kind")
    if kind:
        lines.append(f"  reference   {m['reference'].get('samples')} samples, {kind} inputs")
    for name, r in measured.items():
        label = "error" if len(measured) == 1 else f"error [{name}]"
        metrics = r.get("metrics") or {}
        extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items())
        limits = "".join(f" ({k.replace('_', ' ')} {s} {b})"
                         for k, (s, b) in (r.get("limits") or {}).items())
        lines.append(
            f"  {label:<11} vs PyTorch fp32 {r['relative_error_vs_pytorch']:.4f} (tolerance "
            f"{tol['vs_pytorch']}), vs dequantized graph {r['relative_error_vs_quantized']:.4f}"
            f" (tolerance {tol['vs_quantized']}){extra}{limits}"
            + ("" if r.get("ok", True) else "  BEYOND TOLERANCE"))
    return "\n".join(lines)


def _bits(bits: int | str) -> str:
    return "ternary (1.58-bit)" if bits == "ternary" else f"{bits}-bit"


def _mb(n: int) -> str:
    from edgepet.runtime.bundle import size_text

    return size_text(n)


# --- device-side commands (no torch) --------------------------------------------------------


def _open(path: str):
    from edgepet.runtime.bundle import Bundle

    return Bundle.open(path)


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    bundle = _open(args.bundle)
    texts = list(args.text)
    if args.text_file:
        from edgepet.runtime.text import read_text_file

        texts += read_text_file(args.text_file)
    if bool(texts) == bool(args.input):
        raise _Usage("give the inputs with --input x.npz, or text with --text/--text-file "
                     "(one of the two)")
    session = bundle.session(args.threads, args.trust_bundle_library)
    if texts:
        from edgepet.runtime.text import TextEncoder

        arrays = TextEncoder.from_bundle(bundle).encode(texts)
    else:
        arrays = _read_arrays(args.input)
    if list(arrays) == [""]:
        if len(session.input_names) != 1:
            raise _Usage(f"the bundle takes inputs {', '.join(session.input_names)} — give an "
                         ".npz with one array per name")
        arrays = {session.input_names[0]: arrays[""]}
    outputs = session.run(arrays, adapter=args.adapter)
    for name, value in outputs.items():
        preview = np.array2string(value.ravel()[:6], precision=4)
        print(f"{name}: {value.dtype} {list(value.shape)} {preview}")
    if args.output:
        try:
            np.savez(args.output, **outputs)
        except OSError as error:
            raise _Usage(f"cannot write --output {args.output}: {error.strerror or error} — "
                         "choose a file in a folder that exists and that you may write") from None
        print(f"wrote {args.output}")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    bundle = _open(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    print(summary(bundle))
    op = m["operator"]
    library = (f"the installed edgepet's ({op['library']} ships for devices without it)"
               if op.get("library") else "the installed edgepet's")
    print(f"  operator    {op['domain']}.{op['op_type']} v{op['version']}, layout {op['layout']},"
          f" ABI {op['abi_version']}; op library: {library}")
    print("  inputs      " + ", ".join(f"{i['name']} {i['dtype']} {i['shape']}"
                                         for i in m["inputs"]))
    print("  outputs     " + ", ".join(f"{o['name']} {o['dtype']} {o['shape']}"
                                         for o in m["outputs"]))
    print(f"\n  {'layer':<40} {'N':>6} {'K':>6} {'bits':>7} {'group':>6} {'fp32':>10} "
          f"{'stored':>10} {'ratio':>6} {'bits/w':>7}")
    for layer in m["layers"]:
        bits = "float" if layer["bits"] is None else str(layer["bits"])
        if layer["switchable"]:
            bits += "*"
        if layer.get("shared_with"):
            bits += "+"
        if layer.get("zero_level"):
            bits += "z"
        print(f"  {layer['name'][:40]:<40} {layer['N']:>6} {layer['K']:>6} {bits:>7} "
              f"{layer['group_size'] or '-'!s:>6} {layer['float_bytes']:>10,} "
              f"{layer['stored_bytes']:>10,} {_ratio(layer['float_bytes'], layer['stored_bytes'])} "
              f"{stored_bits_per_weight(layer):>7.2f}")
    if any(layer["switchable"] for layer in m["layers"]):
        print("  * switchable: its parameters come from the active adapter file")
    if any(layer.get("zero_level") for layer in m["layers"]):
        print("  z zero-level codes: s*(q - 2^(b-1)), no zero points")
    for layer in m["layers"]:
        if layer.get("shared_with"):
            print(f"  + {layer['name']} reads {layer['shared_with']}'s codes (stored once; "
                  "its bytes are the table's)")
    print("  bits/w: bytes stored per weight x 8 — codes, fp16 scales, zero points and bias")
    print("\n  files (sizes and SHA-256 checked against the manifest):")
    for rel, info in m["files"].items():
        print(f"    {rel:<44} {info['bytes']:>12,} bytes")
    unlisted = bundle.unlisted_files()
    if unlisted:
        print("  not in the file table, never read: " + ", ".join(unlisted[:10])
              + (f" and {len(unlisted) - 10} more" if len(unlisted) > 10 else ""))
    return EXIT_OK


def stored_bits_per_weight(layer: dict) -> float:
    """Bits a layer stores per weight (its manifest entry's bytes x 8 / (N x K))."""
    return layer["stored_bytes"] * 8 / max(layer["N"] * layer["K"], 1)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:>6.2f}" if b else f"{'-':>6}"


def _verify_lines(results) -> str:
    lines = []
    for r in results:
        name = r.adapter or "model"
        verdict = "ok" if r.ok else "FAILED: " + "; ".join(r.failures())
        extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in r.metrics.items())
        lines.append(
            f"  verify [{name}] {verdict}: vs PyTorch fp32 {r.vs_pytorch:.4f} (<= "
            f"{r.tolerance_pytorch}), vs dequantized graph {r.vs_quantized:.4f} (<= "
            f"{r.tolerance_quantized}){extra}")
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    bundle = _open(args.bundle)
    if args.dry_run:
        print(f"edgepet verify: {bundle.path}: manifest, paths, {len(bundle.manifest['files'])}"
              " files (sizes, SHA-256) and operator ABI check out; nothing was loaded or run")
        return EXIT_OK
    results = bundle.verify(args.threads, args.trust_bundle_library)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(f"edgepet verify: {bundle.path} ({_bits(bundle.manifest['quantization']['bits'])}, "
              f"target {bundle.target})")
        print(_verify_lines(results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_VERIFY_FAILED


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgepet.device_tests.cli import run

    return run(args)


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgepet.targets import TARGETS

    if args.json:
        print(json.dumps({n: p.to_dict() for n, p in TARGETS.items()}, indent=2))
        return EXIT_OK
    for profile in TARGETS.values():
        here = " (this machine's architecture)" if profile.runs_on_host() else ""
        print(f"{profile.name}: {profile.description}{here}")
        print(f"  cpu        {profile.arch}, {profile.cpu}")
        missing = f" (no {', '.join(profile.missing_features)})" if profile.missing_features else ""
        print(f"  isa        {', '.join(profile.isa_features)}{missing}")
        print(f"  defaults   {profile.default_bits}-bit, group {profile.default_group_size}, "
              f"{profile.threads} threads, {profile.kernel} kernel, layout {profile.layout}")
        tc = profile.toolchain
        print(f"  toolchain  {tc.cxx}"
              + (f"; run with {tc.emulator}" if tc.emulator else "")
              + (f"; {tc.note}" if tc.note else ""))
    return EXIT_OK


# --- decoder bundles: generate and perplexity -----------------------------------------------


def _llm_parsers(sub: Any) -> None:
    gen = sub.add_parser(
        "generate", help="generate text with a decoder (LLM) bundle",
        description="Continue a prompt (--prompt) or answer a chat message with the bundle's "
                    "chat template (--chat). Streams text as it is generated; --json prints "
                    "one object with the text and prefill/decode tokens per second.")
    gen.add_argument("bundle", help="decoder bundle folder (edgepet export MODEL.gguf -o ...)")
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text to continue")
    what.add_argument("--chat", help="a user message, answered as the assistant")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="token limit (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 (default): greedy; > 0: sample")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    gen.add_argument("--seed", type=int, help="random seed for sampling")
    gen.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    gen.add_argument("--adapter", help="adapter to generate with, for bundles exported with "
                                       "several (default: the first; see `edgepet inspect`)")
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end")

    ppl = sub.add_parser(
        "perplexity", help="perplexity of a decoder bundle on a text file",
        description="Non-overlapping windows of --ctx tokens, each from an empty cache; every "
                    "token after a window's first is scored.")
    ppl.add_argument("bundle", help="decoder bundle folder")
    ppl.add_argument("--text", required=True, help="UTF-8 text file")
    ppl.add_argument("--ctx", type=int, default=512, help="window length in tokens (512)")
    ppl.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text")
    ppl.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    ppl.add_argument("--adapter", help="adapter to score with (default: the first)")
    ppl.add_argument("--json", action="store_true", help="print one JSON object")


def _cmd_generate(args: argparse.Namespace) -> int:
    from edgepet.runtime.generate import open_decoder

    session = open_decoder(args.bundle, args.threads, args.adapter)

    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    result = session.generate(
        args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        on_text=None if args.json else show)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"\n[{result.prompt_tokens} prompt tokens at {result.prefill_tok_s:.1f} tok/s, "
              f"{result.generated_tokens} generated at {result.decode_tok_s:.1f} tok/s, "
              f"stop: {result.stop_reason}]", file=sys.stderr)
    return EXIT_OK


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from edgepet.runtime.generate import open_decoder

    file = Path(args.text)
    if not file.is_file():
        raise _Usage(f"text file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _Usage(f"{file} is not UTF-8 text ({error})") from None
    session = open_decoder(args.bundle, args.threads, args.adapter)

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"  window {done}/{total}", file=sys.stderr, flush=True)

    result = session.perplexity(text, ctx=args.ctx, max_tokens=args.max_tokens,
                                progress=progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"perplexity {result.perplexity:.4f} over {result.tokens} tokens "
              f"({result.windows} windows of up to {result.ctx})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
