"""Calibrated quantization of a decoder: calibration text, the float forward, GPTQ per layer.

``--quantizer gptq`` quantizes each projection with :func:`edgepet.quant.gptq.gptq_quantize`
for the inputs it sees on calibration text. The inputs come from a forward pass written
here in numpy, one transformer layer at a time, rather than from the ONNX graph with the
projection inputs exposed: *sequential* GPTQ quantizes layer ``i`` on the inputs produced
by the already quantized layers ``0 .. i-1`` (and, inside a layer, ``o`` on the attention
output of the quantized ``qkv``, ``down`` on the activation of the quantized ``gate_up``),
which would take one ONNX graph per projection; a layer-wise numpy forward gives every
input in one pass and needs nothing beyond numpy (decoder export does not need torch).
The forward is the graph's arithmetic (RMS norm, rotate-half RoPE, grouped-query causal
attention, SiLU-gated MLP); a test checks its logits against the fp32 ONNX graph.

The default calibration text is derived offline from the Python standard library: the
docstrings of a fixed list of pure-Python modules and of their public classes and functions
(:func:`default_text`) — no network, and no overlap with the evaluation text of
``edgepet perplexity`` in the docs (``pydoc_data.topics``, the language reference). Windows
of ``ctx`` tokens are taken evenly spaced across the tokenized text, each attended from its
own first token, as ``edgepet perplexity`` scores them.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.checkpoint import Checkpoint
from edgepet.quant import quantize
from edgepet.quant.gptq import DEFAULT_DAMP, gptq_quantize, hessian, output_error
from edgepet.quant.tensor import Bits, QuantizedTensor
from edgepet.runtime.errors import BadInputError

#: Calibration tokens by default (16 windows of 512): H is K x K with K <= 1536 for
#: SmolLM2, so 8,192 rows are several times K; see docs/llm.md for the sweep.
DEFAULT_TOKENS = 8192
#: Fewer tokens than this cannot estimate any H worth the name.
MIN_TOKENS = 128
#: Window length: the context ``edgepet perplexity`` measures with.
DEFAULT_CTX = 512
#: Pure-Python standard-library modules whose docstrings make the default text (sorted
#: public classes and functions defined in each, docstrings of 200+ characters).
DEFAULT_MODULES = (
    "argparse", "asyncio.events", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "difflib", "email.message", "enum", "fractions", "functools",
    "gettext", "heapq", "http.client", "inspect", "ipaddress", "json", "logging", "optparse",
    "pathlib", "pickle", "pprint", "queue", "random", "sched", "secrets", "selectors",
    "shlex", "shutil", "smtplib", "socketserver", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "trace", "tracemalloc",
    "typing", "unittest.case", "urllib.parse", "urllib.request", "uuid", "warnings",
    "zipfile",
)
DEFAULT_SOURCE = "python-stdlib-docstrings"
#: Each group's scale and zero point from the clipping search (weighted by diag H) rather
#: than the group's min/max: SmolLM2-135M ``--bits 2`` perplexity 36.4 -> 21.6 (docs/llm.md).
DEFAULT_CLIP_SEARCH = True
#: A projection whose rounded codes already leave less relative output error than this on
#: the calibration inputs keeps them without running GPTQ.
EXACT_ENOUGH = 1e-3

Progress = Callable[[str], None]


def default_text() -> str:
    """The default calibration text: stdlib docstrings (see :data:`DEFAULT_MODULES`)."""
    parts = []
    for name in DEFAULT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a stripped-down Python: the record's sha256 says what was used
            continue
        with warnings.catch_warnings():  # typing.io & co. warn when their docs are read
            warnings.simplefilter("ignore", DeprecationWarning)
            parts += _docstrings(module)
    return "\n\n".join(parts)


def _docstrings(module: Any) -> list[str]:
    """A module's docstring, then those (of 200+ characters) of the public classes and
    functions it defines, by name."""
    parts = [inspect.getdoc(module) or ""]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= 200:
                parts.append(doc)
    return [p for p in parts if p]


@dataclass
class Calibration:
    """Token windows to calibrate on, and the manifest's record of where they came from."""

    windows: list[list[int]]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


def check_options(calibration: str | os.PathLike[str] | None, tokens: int | None) -> None:
    """Bad calibration options, before anything is read or written (BadInputError)."""
    if calibration is not None and not Path(calibration).is_file():
        raise BadInputError(f"--calibration {calibration}: no such file — give a UTF-8 text "
                            "file, or leave --calibration out for the default text (Python "
                            "standard-library docstrings)")
    if tokens is not None and (isinstance(tokens, bool) or int(tokens) < MIN_TOKENS):
        raise BadInputError(f"--calibration-tokens {tokens} is too few — use at least "
                            f"{MIN_TOKENS} (default {DEFAULT_TOKENS})")


@dataclass
class CalibrationText:
    """A calibration text, tokenized: its token ids, what it is (``source``, ``file``, or
    the default's modules) and its SHA-256, for the manifest."""

    ids: list[int]
    record: dict[str, Any]
    where: str  # for messages: "the default calibration text" or the file


def calibration_text(tokenizer: Any, calibration: str | os.PathLike[str] | None = None
                     ) -> CalibrationText:
    """The text of ``calibration`` (a UTF-8 text file) or :func:`default_text`, tokenized by
    ``tokenizer`` (a ``tokenizers.Tokenizer``, the checkpoint's); read once per export and
    cut into windows by :func:`windows_of` for every use."""
    check_options(calibration, None)
    if calibration is None:
        text = default_text()
        record: dict[str, Any] = {"source": DEFAULT_SOURCE, "modules": list(DEFAULT_MODULES),
                                  "python": sys.version.split()[0]}
    else:
        try:
            text = Path(calibration).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(f"--calibration {calibration} cannot be read as UTF-8 text "
                                f"({error})") from None
        record = {"source": "file", "file": Path(calibration).name}
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    record["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    where = "the default calibration text" if calibration is None else str(calibration)
    return CalibrationText(ids, record, where)


def windows_of(text: CalibrationText, tokens: int | None = None,
               ctx: int = DEFAULT_CTX) -> Calibration:
    """``tokens`` calibration tokens of ``text`` in windows of ``ctx``, evenly spaced over
    it; BadInputError when the text is shorter than asked."""
    check_options(None, tokens)
    wanted = DEFAULT_TOKENS if tokens is None else int(tokens)
    ids = text.ids
    if len(ids) < wanted:
        raise BadInputError(f"{text.where} has {len(ids)} tokens, fewer than the {wanted} "
                            f"calibration tokens asked for — give a longer text or a smaller "
                            f"--calibration-tokens (at least {MIN_TOKENS})")
    count = -(-wanted // ctx)
    spans = [ctx] * (wanted // ctx) + ([wanted % ctx] if wanted % ctx else [])
    # Evenly spaced windows: the text's sections all speak, not only its beginning.
    starts = np.linspace(0, len(ids) - ctx if len(ids) >= ctx else 0, count).astype(int)
    windows = [ids[s:s + n] for s, n in zip(starts, spans, strict=True)]
    record = dict(text.record, text_tokens=len(ids), tokens=sum(len(w) for w in windows),
                  windows=len(windows), ctx=ctx)
    return Calibration(windows, record)


def calibration_windows(tokenizer: Any, calibration: str | os.PathLike[str] | None = None,
                        tokens: int | None = None, ctx: int = DEFAULT_CTX) -> Calibration:
    """:func:`windows_of` the :func:`calibration_text` of ``calibration``."""
    check_options(calibration, tokens)
    return windows_of(calibration_text(tokenizer, calibration), tokens, ctx)


# --- the float forward, one projection input at a time ------------------------------------


#: ``(projection name, its input X [tokens, K]) -> the weight [N, K] the forward goes on
#: with`` (the float weight, or the dequantized codes for sequential calibration).
WeightFor = Callable[[str, np.ndarray], np.ndarray]


def _rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma).astype(
        np.float32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of ``x`` ``[heads, T, d]`` with tables ``[T, d/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _attention(qkv: np.ndarray, lengths: Sequence[int], ck: Checkpoint, cos: np.ndarray,
               sin: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention per window of ``qkv`` ``[tokens, q + 2 kv]``."""
    c = ck.config
    d, heads, kv_heads = c.head_dim, c.num_heads, c.num_kv_heads
    q_size, kv_size = heads * d, kv_heads * d
    out = np.empty((qkv.shape[0], q_size), np.float32)
    start = 0
    for n in lengths:
        rows = qkv[start:start + n]
        q = rows[:, :q_size].reshape(n, heads, d).transpose(1, 0, 2)
        k = rows[:, q_size:q_size + kv_size].reshape(n, kv_heads, d).transpose(1, 0, 2)
        v = rows[:, q_size + kv_size:].reshape(n, kv_heads, d).transpose(1, 0, 2)
        q, k = _rope(q, cos[:n], sin[:n]), _rope(k, cos[:n], sin[:n])
        repeat = heads // kv_heads
        k, v = np.repeat(k, repeat, axis=0), np.repeat(v, repeat, axis=0)
        scores = (q @ k.transpose(0, 2, 1)) / np.sqrt(d)
        scores += np.triu(np.full((n, n), -np.inf, np.float32), 1)
        scores -= scores.max(-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(-1, keepdims=True)
        out[start:start + n] = (p @ v).transpose(1, 0, 2).reshape(n, q_size)
        start += n
    return out


def forward(ck: Checkpoint, windows: Sequence[Sequence[int]], weight_for: WeightFor,
            progress: Callable[[int], None] | None = None,
            residual: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """Run the decoder on ``windows`` (each from an empty cache) and return the final
    normed hidden states ``[tokens, hidden]`` (the head's input; the head is
    ``weight_for("lm_head", h)``, its logits are not computed).

    Every projection's input is handed to ``weight_for`` before the projection runs, in
    graph order; the weight it returns is the one applied. ``progress(i)`` after layer i;
    ``residual(block, x)`` with the residual stream ``x`` right after each block added its
    output (``block``: ``layers.i.attn`` or ``layers.i.mlp``).
    """
    c = ck.config
    lengths = [len(w) for w in windows]
    ids = np.concatenate([np.asarray(w, np.int64) for w in windows])
    cos, sin = llm_graph.rope_tables(c, max(lengths))
    x = ck.embedding[ids].astype(np.float32)
    eps = c.rms_norm_eps

    def project(name: str, h: np.ndarray) -> np.ndarray:
        return h @ weight_for(name, h).T

    for i in range(c.num_layers):
        p = f"layers.{i}"
        h = _rms_norm(x, ck.layer(i, "input_layernorm"), eps)
        att = _attention(project(f"{p}.attn.qkv", h), lengths, ck, cos, sin)
        x = x + project(f"{p}.attn.o", att)
        if residual is not None:
            residual(f"{p}.attn", x)
        h = _rms_norm(x, ck.layer(i, "post_attention_layernorm"), eps)
        gate, up = np.split(project(f"{p}.mlp.gate_up", h), 2, axis=-1)
        act = (gate / (1.0 + np.exp(-gate)) * up).astype(np.float32)
        x = x + project(f"{p}.mlp.down", act)
        if residual is not None:
            residual(f"{p}.mlp", x)
        if progress is not None:
            progress(i)
    h = _rms_norm(x, ck.weights["model.norm.weight"], eps)
    weight_for("lm_head", h)
    return h


# --- GPTQ over the model ------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What one projection becomes (bits None: kept in float)."""

    bits: Bits | None
    group_size: int | str | None
    symmetric: bool
    zero_level: bool = False


@dataclass
class CalibratedWeights:
    """GPTQ's codes per projection, and the calibration error each ended with.

    ``errors``: relative ``||X (W - Q)^T|| / ||X W^T||`` on the inputs GPTQ saw;
    ``rtn_errors``: the same for round-to-nearest on the same inputs; ``rtn_kept``: the
    projections where rounding was no worse, which keep the rounded codes;
    ``record``: what calibrated them (the manifest's ``quantization.calibration``).
    """

    tensors: dict[str, QuantizedTensor]
    errors: dict[str, float]
    rtn_errors: dict[str, float]
    rtn_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)


def gptq_checkpoint(
    ck: Checkpoint,
    choose: Callable[[llm_graph.Projection], Choice],
    calibration: Calibration,
    *,
    sequential: bool = True,
    damp: float = DEFAULT_DAMP,
    clip_search: bool = DEFAULT_CLIP_SEARCH,
    progress: Progress | None = None,
    fixed: Mapping[str, QuantizedTensor] | None = None,
) -> CalibratedWeights:
    """GPTQ codes for every projection ``choose`` does not keep in float (or the rounded
    codes, where their calibration error is no larger).

    ``sequential``: layer after layer on the outputs of the quantized layers before it
    (the default); False: one pass of the float model collects every H first.
    ``clip_search``: group scales from the clipping search (:func:`gptq_quantize`).
    ``fixed``: projections whose codes are made already (another adapter's calibration):
    the forward runs their dequantized values and leaves them as they are.
    """
    start = time.perf_counter()
    by_name = {p.name: p for p in llm_graph.projections(ck.config)}
    out = CalibratedWeights({}, {}, {})
    hessians: dict[str, np.ndarray] = {}

    def quantize_one(name: str, h: np.ndarray) -> np.ndarray:
        proj = by_name[name]
        w = proj.weight(ck)
        choice = choose(proj)
        if choice.bits is None:
            return w
        try:
            rtn = quantize(w, choice.bits, choice.group_size, choice.symmetric,
                           choice.zero_level)
            q_rtn = rtn.dequantize()
            rtn_error = out.rtn_errors[name] = output_error(w, q_rtn, h)
            qt, q, error = rtn, q_rtn, rtn_error
            # Rounding can be (nearly) exact already -- a 4-bit g32 projection of a Q4_1
            # GGUF holds its source's values -- and GPTQ cannot do better than that.
            if rtn_error > EXACT_ENOUGH:
                qt = gptq_quantize(w, h, choice.bits, choice.group_size, choice.symmetric,
                                   damp=damp, clip_search=clip_search,
                                   zero_level=choice.zero_level)
                q = qt.dequantize()
                error = output_error(w, q, h)
        except ValueError as error:
            raise BadInputError(f"quantizing {name} failed: {error}") from None
        if error >= rtn_error:
            qt, q, error = rtn, q_rtn, rtn_error
            out.rtn_kept.append(name)
        out.tensors[name] = qt
        out.errors[name] = error
        return q

    def sequential_step(name: str, x: np.ndarray) -> np.ndarray:
        if fixed is not None and name in fixed:
            return fixed[name].dequantize()
        return quantize_one(name, hessian(x))

    def collect(name: str, x: np.ndarray) -> np.ndarray:
        if fixed is not None and name in fixed:
            return fixed[name].dequantize()
        if choose(by_name[name]).bits is not None:
            hessians[name] = hessian(x)
        return by_name[name].weight(ck)

    layers = ck.config.num_layers

    def say_layer(i: int) -> None:
        if progress is None:
            return
        names = [n for n in out.errors if n.startswith(f"layers.{i}.")]
        detail = ", ".join(f"{n.split('.', 2)[2]} {out.errors[n]:.3f} (rtn "
                           f"{out.rtn_errors[n]:.3f})" for n in names)
        verb = "quantized" if sequential else "calibrated"
        progress(f"  layer {i + 1}/{layers} {verb} [{time.perf_counter() - start:.0f} s]"
                 + (f": output error {detail}" if detail else ""))

    if sequential:
        forward(ck, calibration.windows, sequential_step, say_layer)
    else:
        forward(ck, calibration.windows, collect, say_layer)
        for name in list(hessians):
            quantize_one(name, hessians.pop(name))
            if name.endswith("mlp.down"):
                say_layer(int(name.split(".")[1]))
    if progress is not None and "lm_head" in out.errors:
        progress(f"  lm_head: output error {out.errors['lm_head']:.3f} (rtn "
                 f"{out.rtn_errors['lm_head']:.3f})")
    out.seconds = time.perf_counter() - start
    return out


__all__ = ["DEFAULT_MODULES", "DEFAULT_TOKENS", "MIN_TOKENS", "CalibratedWeights",
           "Calibration", "CalibrationText", "Choice", "calibration_text",
           "calibration_windows", "check_options", "default_text", "forward",
           "gptq_checkpoint", "windows_of"]
