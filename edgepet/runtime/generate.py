"""Text generation and perplexity with a decoder bundle (no torch, no exporter).

:class:`DecoderSession` is what ``edgepet.load(bundle)`` returns for a decoder bundle: a
:class:`~edgepet.runtime.bundle.BundleSession` that also tokenizes, keeps the KV cache
between calls (ONNX Runtime I/O binding: the cache stays in ORT's buffers), samples, and
streams. :func:`measure_decode` is the prefill/decode tokens-per-second measurement that
benchmarks and ``edgepet bench`` call.

A bundle exported with several adapters switches between them with
:meth:`DecoderSession.set_adapter` (the first is active at the start), without reloading the
model: the switchable projections' tensors of the active adapter are bound as inputs of
each run. A KV cache holds keys and values computed with one adapter's weights, so a cache
remembers its adapter and is refused under another.
"""

from __future__ import annotations

import os
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepet.runtime.bundle import Bundle, BundleSession
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.tokenizer import StreamDecoder, Tokenizer

#: The graph input that marks a shared-buffer cache (op ABI 5; exporters/llm/graph.py).
PAST_LENGTH = "past_length"


@dataclass
class GenerationResult:
    """What one ``generate`` call produced, and how fast."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stop_reason: str  # "eos", "length" or "context"
    decode_steps: int = 0  # forward calls after the prefill

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens per second of the prefill call."""
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second of the decode calls (each feeds one token and yields the
        logits of the next; the first generated token comes from the prefill call)."""
        steps = self.decode_steps
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``edgepet generate --json`` object."""
        return {"text": self.text, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens,
                "prefill_tok_s": round(self.prefill_tok_s, 2),
                "decode_tok_s": round(self.decode_tok_s, 2),
                "stop_reason": self.stop_reason, "tokens": self.tokens}


@dataclass
class PerplexityResult:
    """Perplexity over non-overlapping windows, each from an empty cache."""

    perplexity: float
    tokens: int  # tokens scored
    ctx: int
    windows: int
    input_tokens: int
    nll: float = field(repr=False, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """The ``edgepet perplexity --json`` object."""
        return {"perplexity": round(self.perplexity, 4), "tokens": self.tokens,
                "ctx": self.ctx, "windows": self.windows, "input_tokens": self.input_tokens}


@dataclass
class Sampling:
    """How the next token is chosen: greedy (temperature 0) or sampled."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise BadInputError(f"temperature {self.temperature} must be >= 0 (0: greedy)")
        if self.top_k < 0:
            raise BadInputError(f"top_k {self.top_k} must be >= 0 (0: no limit)")
        if not 0 < self.top_p <= 1:
            raise BadInputError(f"top_p {self.top_p} must be in (0, 1]")

    def chooser(self) -> Callable[[np.ndarray], int]:
        """A function logits -> token id, with its own random generator."""
        if self.temperature == 0:
            return lambda logits: int(np.argmax(logits))
        rng = np.random.default_rng(self.seed)

        def choose(logits: np.ndarray) -> int:
            scores = logits.astype(np.float64) / self.temperature
            if 0 < self.top_k < scores.size:
                kth = np.partition(scores, -self.top_k)[-self.top_k]
                scores = np.where(scores < kth, -np.inf, scores)
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            if self.top_p < 1.0:
                order = np.argsort(-probs)
                cumulative = np.cumsum(probs[order])
                cut = int(np.searchsorted(cumulative, self.top_p)) + 1
                kept = np.zeros_like(probs)
                kept[order[:cut]] = probs[order[:cut]]
                probs = kept / kept.sum()
            return int(rng.choice(probs.size, p=probs))

        return choose


class KVCache(list):
    """The cache ``forward`` returns: ORT values per ``past`` input, how many positions
    they hold (``length``), and the adapter whose weights computed them (a cache is valid
    only under that adapter).

    A bundle of op ABI 5 or later keeps its cache in fixed-capacity buffers that each
    forward call extends in place (``_CacheBuffers``): the values are those buffers, of
    which the first ``length`` positions are filled. A cache stays usable after a longer
    one was made from it: ``forward`` then copies its positions to new buffers first.
    """

    def __init__(self, values: Sequence[Any], adapter: str | None, length: int,
                 buffers: _CacheBuffers | None = None) -> None:
        super().__init__(values)
        self.adapter = adapter
        self.length = length
        self.buffers = buffers
        self.version = buffers.version if buffers is not None else 0


class _CacheBuffers:
    """The key/value buffers of a shared-buffer cache, one per ``past`` input, each
    ``[1, kv_heads, capacity, head_dim]``, as numpy arrays and ORT values over the same
    memory. ``version`` counts the calls that wrote them (the newest cache is the one of
    the current version: only it may write in place); a fresh prompt reuses them only when
    no live cache refers to them (``in_use``)."""

    def __init__(self, ort: Any, count: int, kv_heads: int, head_dim: int,
                 capacity: int, dtype: Any) -> None:
        self._ort = ort
        self.arrays = [np.zeros((1, kv_heads, capacity, head_dim), dtype)
                       for _ in range(count)]
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self.capacity = capacity
        self.version = 0
        self._caches: list[weakref.ref[KVCache]] = []

    def add_cache(self, cache: KVCache) -> None:
        """Remember ``cache`` (weakly) as one that refers to these buffers."""
        self._caches = [ref for ref in self._caches if ref() is not None]
        self._caches.append(weakref.ref(cache))

    @property
    def in_use(self) -> bool:
        """Whether a live cache refers to these buffers."""
        return any(ref() is not None for ref in self._caches)

    def copy(self, length: int, capacity: int) -> _CacheBuffers:
        """New buffers of ``capacity`` positions holding these ones' first ``length``."""
        first = self.arrays[0]
        new = _CacheBuffers(self._ort, len(self.arrays), first.shape[1], first.shape[3],
                            capacity, first.dtype)
        for mine, theirs in zip(self.arrays, new.arrays, strict=True):
            theirs[:, :, :length] = mine[:, :, :length]
        return new

    def grow(self, length: int, capacity: int) -> None:
        """Replace the buffers by ones of ``capacity`` positions, keeping the first
        ``length`` (the caches of these buffers see the new ones)."""
        new = self.copy(length, capacity)
        self.arrays, self.values, self.capacity = new.arrays, new.values, capacity


class DecoderSession(BundleSession):
    """A decoder bundle ready to generate: ``generate``, ``stream``, ``perplexity``;
    ``set_adapter(name)`` switches adapters when the bundle has several."""

    def __init__(self, bundle: Bundle, threads: int | None = None,
                 trust_library: bool | None = None) -> None:
        decoder = bundle.manifest.get("decoder")
        if bundle.manifest.get("kind") != "decoder" or decoder is None:
            raise BadInputError(f"bundle {bundle.path} is not a decoder (language model) "
                                "bundle — use `edgepet run` for it")
        super().__init__(bundle, threads, trust_library)
        self.decoder = decoder
        self.config = decoder["config"]
        self.max_context = int(decoder["max_context"])
        self.tokenizer = Tokenizer.from_bundle(bundle.path, decoder)
        layers = int(self.config["num_layers"])
        self._past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self._present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self._outputs = ["logits", *self._present]
        self._empty = np.zeros((1, int(self.config["num_kv_heads"]), 0,
                                int(self.config["head_dim"])), np.float32)
        self._empty_value = self._ort.OrtValue.ortvalue_from_numpy(self._empty)
        # Bundles of op ABI 5+: a cache of fixed-capacity buffers written in place, bound
        # once to both the past inputs and the present outputs (no copy per token).
        self._shared = PAST_LENGTH in self._inputs
        self._cache_dtype = np.float16 if self._inputs[self._past[0]].type == \
            "tensor(float16)" else np.float32
        self._buffers: _CacheBuffers | None = None  # reused by fresh prompts when free
        self._binding: Any = None
        self._binding_key: tuple[Any, ...] | None = None
        # Adapter -> its tensors as ORT values (read once; the first adapter's are the
        # graph's defaults and are never bound); forward() feeds them as inputs.
        self._adapter_values: dict[str, dict[str, Any]] = {}
        self._bound: dict[str, Any] = {}
        self._active = self.adapters[0] if self.adapters else None

    # --- adapters -------------------------------------------------------------------------

    def set_adapter(self, name: str | None) -> None:
        """Use adapter ``name`` from the next call on (None: the first, the default).

        Nothing is reloaded: the adapter's tensors are read from its file once and bound
        to the graph's switchable inputs. Caches built under another adapter are refused.
        """
        if name is None or not self.adapters:
            if name is not None:
                self.bundle.adapter_path(name)  # the error that names the bundle's adapters
            self._bound, self._active = {}, (self.adapters[0] if self.adapters else None)
            super().set_adapter(None)
            return
        self.bundle.adapter_path(name)  # unknown names: BadInputError listing the adapters
        if name == self.adapters[0]:
            self._bound = {}
        else:
            if name not in self._adapter_values:
                self._adapter_values[name] = self._read_adapter(name)
            self._bound = self._adapter_values[name]
        super().set_adapter(name if name != self.adapters[0] else None)
        self._active = name

    def _read_adapter(self, name: str) -> dict[str, Any]:
        from edgepet.runtime.bundle import BundleError

        file = self.bundle.adapter_path(name)
        try:
            return dict(self._ort.AdapterFormat.read_adapter(str(file)).get_parameters())
        except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
            raise BundleError(f"bundle file {file} is not a readable adapter ({error}) — it is "
                              "damaged; copy the bundle again, or export again") from None

    # --- the forward pass -------------------------------------------------------------

    def forward(self, ids: Sequence[int], cache: list[Any] | None = None,
                num_logits: int = 1) -> tuple[np.ndarray, KVCache]:
        """Run ``ids`` after ``cache`` (None: empty); return logits ``[n, vocab]`` of the
        last ``num_logits`` positions (0: all) and the new cache (ORT values)."""
        made_with = getattr(cache, "adapter", self._active)
        if cache is not None and made_with != self._active:
            raise BadInputError(
                f"this KV cache was built under adapter {made_with!r}, but the active adapter "
                f"is {self._active!r} — its keys and values come from the other adapter's "
                "weights; start from an empty cache (cache=None) after set_adapter")
        if self._shared:
            return self._forward_shared(ids, cache, num_logits)
        # One call with every input as an ORT value: binding ~120 names through an
        # IOBinding each token cost 2-6 % of a SmolLM2-135M decode step (docs/llm.md).
        value = self._ort.OrtValue.ortvalue_from_numpy
        feeds = dict(self._bound)
        feeds["input_ids"] = value(np.asarray([list(ids)], np.int64))
        feeds["num_logits"] = value(np.asarray([num_logits], np.int64))
        if cache is None:
            feeds.update(dict.fromkeys(self._past, self._empty_value))
        else:
            feeds.update(zip(self._past, cache, strict=True))
        try:
            outputs = self._session.run_with_ort_values(self._outputs, feeds, self._run_options)
        except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
            raise BadInputError(f"the decoder could not run: {error}") from None
        length = int(outputs[1].shape()[2])
        return outputs[0].numpy()[0], KVCache(outputs[1:], self._active, length)

    def reserve(self, positions: int) -> None:
        """Make the cache buffers of the next fresh prompt hold ``positions`` (at most the
        context), so that a generation of known length never grows them."""
        positions = min(max(positions, 1), self.max_context)
        if not self._shared:
            return
        buffers = self._buffers
        if buffers is None or buffers.in_use or buffers.capacity < positions:
            self._buffers = self._new_buffers(positions)

    def _new_buffers(self, capacity: int) -> _CacheBuffers:
        return _CacheBuffers(self._ort, len(self._past), int(self.config["num_kv_heads"]),
                             int(self.config["head_dim"]), capacity, self._cache_dtype)

    def _capacity_for(self, positions: int, current: int = 0) -> int:
        """Buffer capacity for ``positions``: at least double ``current`` (amortized
        growth), rounded up to 64 positions, at most the context."""
        want = max(positions, 2 * current)
        return min(-(-want // 64) * 64, self.max_context)

    def _forward_shared(self, ids: Sequence[int], cache: KVCache | None,
                        num_logits: int) -> tuple[np.ndarray, KVCache]:
        """``forward`` with the shared-buffer cache: the new positions are written into
        the buffers in place, bound once to the past inputs and present outputs."""
        start = 0 if cache is None else cache.length
        needed = start + len(ids)
        if not ids:
            raise BadInputError("no token ids to run")
        if needed > self.max_context:
            raise BadInputError(f"{start} cached + {len(ids)} new tokens exceed this bundle's "
                                f"context of {self.max_context} — export again with a larger "
                                "--max-context, or start from an empty cache")
        if cache is None:
            buffers = self._buffers
            if buffers is None or buffers.in_use:  # a cache still refers to them: keep it
                buffers = self._buffers = self._new_buffers(self._capacity_for(needed))
        elif cache.buffers is None:
            raise BadInputError("this KV cache is not one of this session's forward calls")
        elif cache.version != cache.buffers.version:
            # A longer cache was made from this one since: its positions are intact, copy
            # them and go on in new buffers (the longer cache keeps the old ones).
            buffers = cache.buffers.copy(start, self._capacity_for(needed))
        else:
            buffers = cache.buffers
        if needed > buffers.capacity:
            buffers.grow(start, self._capacity_for(needed, buffers.capacity))
        ort = self._ort
        binding = self._bind(buffers)
        count = len(ids) if num_logits <= 0 else min(num_logits, len(ids))
        logits = np.empty((1, count, int(self.config["vocab_size"])), np.float32)
        # The ORT values refer to numpy memory: they are kept alive until the run is done.
        values = [ort.OrtValue.ortvalue_from_numpy(np.asarray([list(ids)], np.int64)),
                  ort.OrtValue.ortvalue_from_numpy(np.asarray([num_logits], np.int64)),
                  ort.OrtValue.ortvalue_from_numpy(np.asarray([start], np.int64)),
                  ort.OrtValue.ortvalue_from_numpy(logits)]
        binding.bind_ortvalue_input("input_ids", values[0])
        binding.bind_ortvalue_input("num_logits", values[1])
        binding.bind_ortvalue_input(PAST_LENGTH, values[2])
        binding.bind_ortvalue_output("logits", values[3])
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
            self._binding_key = None  # rebind everything next time
            raise BadInputError(f"the decoder could not run: {error}") from None
        buffers.version += 1
        new = KVCache(buffers.values, self._active, needed, buffers)
        buffers.add_cache(new)
        return logits[0], new

    def _bind(self, buffers: _CacheBuffers) -> Any:
        """The session's I/O binding with ``buffers`` bound to every past input and present
        output and the active adapter's tensors to their inputs (bound again only when
        one of these changed)."""
        key = (self._session, buffers, buffers.values[0])
        old = self._binding_key
        if (old is None or any(a is not b for a, b in zip(key, old[:3], strict=True))
                or old[3] != self._active):
            binding = self._session.io_binding()
            for name, value in self._bound.items():
                binding.bind_ortvalue_input(name, value)
            for past, present, value in zip(self._past, self._present, buffers.values,
                                            strict=True):
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            self._binding, self._binding_key = binding, (*key, self._active)
        return self._binding

    # --- generation ---------------------------------------------------------------------

    def prompt_ids(self, prompt: str | None = None,
                   chat: str | Sequence[dict[str, str]] | None = None) -> list[int]:
        """Token ids of a plain ``prompt`` or of a ``chat`` (a user message or messages)
        rendered with the bundle's chat template."""
        if (prompt is None) == (chat is None):
            raise BadInputError("give either a prompt or a chat message, not both/neither")
        if chat is not None:
            messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
            text = self.tokenizer.apply_chat_template(list(messages))
            return self.tokenizer.encode(text, add_bos=False)
        return self.tokenizer.encode(prompt or "")

    def stream_tokens(self, prompt_ids: Sequence[int], max_new_tokens: int = 64,
                      sampling: Sampling | None = None, ignore_eos: bool = False,
                      timing: dict[str, Any] | None = None) -> Iterator[int]:
        """Yield generated token ids one by one (stops at EOS, the limit or the context).

        ``timing``, when given, receives ``prefill_seconds``, ``decode_seconds`` and
        ``stop_reason`` as the generation proceeds.
        """
        ids = list(prompt_ids)
        if not ids:
            raise BadInputError("the prompt is empty — give some text")
        if len(ids) >= self.max_context:
            raise BadInputError(f"the prompt has {len(ids)} tokens; this bundle's context is "
                                f"{self.max_context} — shorten the prompt (or export with a "
                                "larger --max-context)")
        if max_new_tokens < 0:
            raise BadInputError(f"max_new_tokens {max_new_tokens} must be >= 0")
        timing = {} if timing is None else timing
        timing.update(prefill_seconds=0.0, decode_seconds=0.0, decode_steps=0,
                      stop_reason="length")
        if max_new_tokens == 0:
            return
        choose = (sampling or Sampling()).chooser()
        eos = set() if ignore_eos else set(self.tokenizer.eos_token_ids)
        self.reserve(len(ids) + max_new_tokens)
        start = time.perf_counter()
        logits, cache = self.forward(ids)
        timing["prefill_seconds"] = time.perf_counter() - start
        position = len(ids)
        for step in range(max_new_tokens):
            token = choose(logits[-1])
            if token in eos:
                timing["stop_reason"] = "eos"
                return
            yield token
            position += 1
            if step + 1 == max_new_tokens:
                return
            if position >= self.max_context:
                timing["stop_reason"] = "context"
                return
            start = time.perf_counter()
            logits, cache = self.forward([token], cache)
            timing["decode_seconds"] += time.perf_counter() - start
            timing["decode_steps"] += 1

    def generate(self, prompt: str | None = None, *,
                 chat: str | Sequence[dict[str, str]] | None = None,
                 max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None,
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        """Generate text after ``prompt`` (or a ``chat`` message); greedy by default.

        Args:
            prompt: text to continue (BOS added when the model wants it).
            chat: a user message, or ``[{"role": ..., "content": ...}, ...]``, rendered with
                the bundle's chat template and answered as the assistant.
            max_new_tokens: stop after this many tokens (EOS stops earlier).
            temperature, top_k, top_p, seed: sampling (temperature 0: greedy).
            on_text: called with each new piece of text as it is generated (streaming).
        """
        ids = self.prompt_ids(prompt, chat)
        timing: dict[str, Any] = {}
        tokens: list[int] = []
        stream = StreamDecoder(self.tokenizer)
        for token in self.stream_tokens(ids, max_new_tokens,
                                        Sampling(temperature, top_k, top_p, seed),
                                        timing=timing):
            tokens.append(token)
            piece = stream.push(token)
            if on_text is not None and piece:
                on_text(piece)
        rest = stream.finish()
        if on_text is not None and rest:
            on_text(rest)
        return GenerationResult(
            text=self.tokenizer.decode(tokens), tokens=tokens, prompt_tokens=len(ids),
            prefill_seconds=timing["prefill_seconds"], decode_seconds=timing["decode_seconds"],
            stop_reason=timing["stop_reason"], decode_steps=timing["decode_steps"])

    def stream(self, prompt: str | None = None, **options: Any) -> Iterator[str]:
        """Yield pieces of text as they are generated (``generate``'s options)."""
        chat = options.pop("chat", None)
        max_new_tokens = options.pop("max_new_tokens", 64)
        sampling = Sampling(**options)
        decoder = StreamDecoder(self.tokenizer)
        for token in self.stream_tokens(self.prompt_ids(prompt, chat), max_new_tokens,
                                        sampling):
            piece = decoder.push(token)
            if piece:
                yield piece
        rest = decoder.finish()
        if rest:
            yield rest

    # --- quality ------------------------------------------------------------------------

    def perplexity(self, text: str | None = None, *, ids: Sequence[int] | None = None,
                   ctx: int = 512, max_tokens: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
        """Perplexity of ``text`` (or token ``ids``): non-overlapping windows of ``ctx``
        tokens, each from an empty cache, every token after a window's first scored.

        ``max_tokens`` keeps only the first N tokens of the text.
        """
        if (text is None) == (ids is None):
            raise BadInputError("give either text or token ids")
        if ctx < 2:
            raise BadInputError(f"--ctx {ctx} must be at least 2")
        if ctx > self.max_context:
            raise BadInputError(f"--ctx {ctx} exceeds this bundle's context {self.max_context}")
        tokens = list(ids) if ids is not None else self.tokenizer.encode(text or "", add_bos=False)
        if max_tokens is not None:
            if max_tokens < 2:
                raise BadInputError(f"--max-tokens {max_tokens} must be at least 2")
            tokens = tokens[:max_tokens]
        windows = [tokens[i:i + ctx] for i in range(0, len(tokens), ctx)]
        windows = [w for w in windows if len(w) >= 2]
        if not windows:
            raise BadInputError("the text has fewer than 2 tokens — nothing to score")
        nll, scored = 0.0, 0
        for index, window in enumerate(windows):
            logits = self.forward(window, None, num_logits=0)[0]  # the cache is not kept
            nll += window_nll(logits[:-1], window[1:])
            scored += len(window) - 1
            if progress is not None:
                progress(index + 1, len(windows))
        return PerplexityResult(perplexity=float(np.exp(nll / scored)), tokens=scored, ctx=ctx,
                                windows=len(windows), input_tokens=len(tokens), nll=nll)


def window_nll(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Summed negative log-likelihood of ``targets`` under ``logits`` ``[n, vocab]``."""
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    log_z = np.log(np.exp(x - top).sum(-1)) + top[:, 0]
    picked = x[np.arange(len(targets)), np.asarray(targets)]
    return float(np.sum(log_z - picked))


def open_decoder(path: str | os.PathLike[str], threads: int | None = None,
                 adapter: str | None = None) -> DecoderSession:
    """Open and check a decoder bundle and return its :class:`DecoderSession`, with
    ``adapter`` active (None: the first adapter, when the bundle has several)."""
    session = DecoderSession(Bundle.open(path), threads)
    if adapter is not None:
        session.set_adapter(adapter)
    return session


def measure_decode(bundle: str | os.PathLike[str] | DecoderSession, prompt_tokens: int = 64,
                   new_tokens: int = 128, runs: int = 5, threads: int | None = None,
                   warmup: int = 1) -> dict[str, Any]:
    """Prefill and decode tokens/s of a decoder bundle, llama-bench style (pp / tg).

    A fixed prompt of ``prompt_tokens`` ids (the same for every bundle of one tokenizer)
    is prefilled, then ``new_tokens`` greedy tokens are decoded with EOS ignored, ``runs``
    times after ``warmup`` runs. Returns medians and every run's figures.
    """
    session = bundle if isinstance(bundle, DecoderSession) else open_decoder(bundle, threads)
    if runs < 1 or prompt_tokens < 1 or new_tokens < 2:
        raise BadInputError("measure_decode needs runs >= 1, prompt_tokens >= 1, "
                            "new_tokens >= 2")
    ids = benchmark_prompt(session.tokenizer, prompt_tokens)
    prefill, decode = [], []
    for run in range(warmup + runs):
        timing: dict[str, Any] = {}
        for _ in session.stream_tokens(ids, new_tokens, ignore_eos=True, timing=timing):
            pass
        if run >= warmup:
            prefill.append(prompt_tokens / timing["prefill_seconds"])
            decode.append(timing["decode_steps"] / timing["decode_seconds"])
    return {"prefill_tok_s": statistics.median(prefill),
            "decode_tok_s": statistics.median(decode),
            "prefill_runs": prefill, "decode_runs": decode, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "runs": runs, "threads": threads}


#: Text the benchmark prompt is cut from (repeated as needed).
_BENCH_TEXT = ("The quick brown fox jumps over the lazy dog. Edge devices run small language "
               "models on their CPUs, where every byte of weights read per token counts. ")


def benchmark_prompt(tokenizer: Tokenizer, n: int) -> list[int]:
    """Exactly ``n`` token ids of a fixed English text."""
    ids = tokenizer.encode(_BENCH_TEXT, add_bos=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


__all__ = [
    "DecoderSession",
    "KVCache",
    "GenerationResult",
    "PerplexityResult",
    "Sampling",
    "benchmark_prompt",
    "measure_decode",
    "open_decoder",
    "window_nll",
]
