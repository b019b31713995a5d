"""``--max-size`` for decoders: a width per projection under a size bound.

The bound counts what the encoders' ``--max-size`` counts: every weight of the graph as
stored (``sizes.weight_bytes`` of the manifest: the projections' codes, scales and zero
points, the embedding table, norms, RoPE tables); adapter files, the tokenizer and the
reference data are not weights. The bytes of each projection at each width are those of
its graph tensors (:func:`edgepet.exporters.llm.graph.projection_tensors`), and the rest
is measured on the graph built with float projections, so the plan's total is the
bundle's ``weight_bytes`` exactly; the export checks it again at the end.

The rule: every planned projection starts at the widest width (4 bits unless ``--bits``
is lower) and projections go down one width at a time, the one that adds the least
estimated error per byte saved first, until the weights fit; then any projection that
still fits in what is left goes back up, the most error removed per byte first.

The estimated error of a projection at a width (its *sensitivity*) is measured on
calibration text with the float model, that projection alone rounded to nearest at that
width: the energy its error adds to the residual stream, relative to the stream's energy
right after the block adds it, per token, averaged over the tokens: ``mean_t ‖δ_t‖² /
‖x_t‖²`` — per token because RMS norm scales each token alone, and a few tokens carry
residual streams a hundred times larger than the rest (their sum would hide every other
token from layer 12 of SmolLM2-135M on). ``δ`` is the block's
output error: ``X(W−Q)ᵀ`` for ``attn.o`` and ``mlp.down``, which write to the stream
directly; for ``attn.qkv`` the attention output through the float ``o`` projection, and for
``mlp.gate_up`` the gated activation through the float ``down`` projection, so the
nonlinearities that follow them are counted. The head is weighed the same way against the
logits, over all tokens at once (``‖X(W−Q)ᵀ‖² / ‖XWᵀ‖²``, from ``XᵀX``: the final norm
leaves no token larger than the rest). A perturbation of relative energy ``r`` in the stream
moves the next RMS-normed input by about ``√r``, which is why the stream, not the
projection's own output, is the yardstick: a projection whose output is small next to the
stream matters less. Errors of different projections are taken to add up. Rounding
overstates what GPTQ leaves at 2 and 3 bits (by about 2x at 2 bits), but the ranking is what
the plan uses. The estimate is for ranking only; it is not a number a user could budget,
which is why decoders refuse ``--budget-error``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepet.exporters.llm import calibrate
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.checkpoint import Checkpoint
from edgepet.quant import quantize
from edgepet.runtime import bundle as bundle_io
from edgepet.runtime.errors import BadInputError

#: Widths the plan chooses among, narrowest first (1 bit and ternary destroy a model that
#: was not trained for them: docs/llm.md).
WIDTHS = (2, 3, 4)
#: Calibration tokens the sensitivities are measured on (windows evenly spaced over the
#: calibration text): the measurement runs 3 widths of 4 blocks per layer.
PLAN_TOKENS = 1024
#: The manifest's name of the measure.
METRIC = "residual-energy"

Progress = Callable[[str], None]


@dataclass
class DecoderPlan:
    """A width per projection, and what it was chosen from."""

    bits: dict[str, int]
    errors: dict[str, dict[int, float]]
    costs: dict[str, dict[int, int]]
    other_bytes: int
    max_size: int
    tokens: int = 0
    seconds: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        """The bundle's weight bytes under this plan."""
        return self.other_bytes + sum(self.costs[n][b] for n, b in self.bits.items())

    @property
    def estimate(self) -> float:
        return sum(self.errors[n].get(b, 0.0) for n, b in self.bits.items())

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for name, b in self.bits.items():
            kind = "lm_head" if name == "lm_head" else name.split(".", 2)[2]
            key = f"{kind} {b}-bit"
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items()))

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``quantization.plan`` (the fields the encoders' plan has, and
        the bytes)."""
        return {
            "budget_error": None, "max_size_bytes": self.max_size, "metric": METRIC,
            "estimated_error": round(self.estimate, 6), "summary": self.summary(),
            "weight_bytes": self.weight_bytes, "other_weight_bytes": self.other_bytes,
            "tokens": self.tokens, "seconds": round(self.seconds, 1),
            "layers": {name: {"bits": b, "bytes": self.costs[name][b],
                              "sensitivity": {f"{w}-bit": round(e, 8)
                                              for w, e in self.errors[name].items()}}
                       for name, b in self.bits.items()},
        }


def widths_up_to(bits: Any) -> tuple[int, ...]:
    """The widths a plan may use when the bundle is asked to be at most ``bits`` wide."""
    if bits == "ternary" or isinstance(bits, bool) or int(bits) not in WIDTHS:
        raise BadInputError(f"--max-size plans projections at {', '.join(map(str, WIDTHS))} "
                            f"bits; --bits {bits} is not one of them — leave --bits out (the "
                            "plan goes up to 4) or give 2, 3 or 4 as the widest")
    return tuple(w for w in WIDTHS if w <= int(bits))


def projection_costs(ck: Checkpoint, names: Collection[str], widths: Sequence[int],
                     group_size: Any, symmetric: bool) -> dict[str, dict[int, int]]:
    """Bytes of each projection's graph tensors at each width (one packing per shape)."""
    by_shape: dict[tuple[int, int], dict[int, int]] = {}
    costs = {}
    for proj in llm_graph.projections(ck.config):
        if proj.name not in names:
            continue
        w = proj.weight(ck)
        if w.shape not in by_shape:
            by_shape[w.shape] = {
                b: _bytes(llm_graph.projection_tensors(
                    quantize(w, b, group_size, symmetric), proj.name)) for b in widths}
        costs[proj.name] = by_shape[w.shape]
    return costs


def other_weight_bytes(ck: Checkpoint, names: Collection[str], context: int,
                       table_dtype: type, table_bits: int | None, head: str) -> int:
    """Weight bytes of everything but the projections ``names``, measured on the graph
    built with float projections (embedding table stored as it will be)."""
    from edgepet.exporters.manifest import initializer_bytes
    from edgepet.exporters.rewrite import quantize_embeddings

    weights = llm_graph.float_weights(ck)
    model = llm_graph.build_decoder(ck, weights, context, table_dtype, head=head)
    if table_bits is not None:
        quantize_embeddings(model, table_bits, 32, min_elements=0)
    planned = sum(_bytes(llm_graph.projection_tensors(weights[n], n)) for n in names)
    return initializer_bytes(model) - planned


def sensitivities(ck: Checkpoint, windows: Sequence[Sequence[int]], names: Collection[str],
                  widths: Sequence[int], group_size: Any, symmetric: bool,
                  progress: Progress | None = None) -> dict[str, dict[int, float]]:
    """``{projection: {width: estimated error}}`` (the module docstring's measure)."""
    c = ck.config
    by_name = {p.name: p for p in llm_graph.projections(c)}
    lengths = [len(w) for w in windows]
    cos, sin = llm_graph.rope_tables(c, max(lengths))
    energy: dict[str, dict[int, Any]] = {}  # per token, or a total for the head
    stream: dict[str, Any] = {}
    start = time.perf_counter()

    def weight(name: str) -> np.ndarray:
        return by_name[name].weight(ck)

    def measure(name: str, x: np.ndarray) -> np.ndarray:
        w = weight(name)
        if name not in names:
            return w
        kind = "lm_head" if name == "lm_head" else name.split(".", 2)[2]
        layer = name.rsplit(".", 2)[0]
        if kind == "attn.qkv":
            w_o = weight(f"{layer}.attn.o").T

            def block(m: np.ndarray) -> np.ndarray:
                return calibrate._attention(x @ m.T, lengths, ck, cos, sin) @ w_o
        elif kind == "mlp.gate_up":
            w_down = weight(f"{layer}.mlp.down").T

            def block(m: np.ndarray) -> np.ndarray:
                gate, up = np.split(x @ m.T, 2, axis=-1)
                return (gate / (1.0 + np.exp(-gate)) * up).astype(np.float32) @ w_down
        else:  # o and down write to the stream themselves

            def block(m: np.ndarray) -> np.ndarray:
                return x @ m.T
        if kind == "lm_head":  # the logits: a total, from X^T X (a [tokens, vocab] is big)
            h = (x.T @ x).astype(np.float32)
            energy[name] = {b: _trace(w - quantize(w, b, group_size, symmetric).dequantize(),
                                      h) for b in widths}
            stream[name] = _trace(w, h)
        else:
            reference = block(w)
            energy[name] = {b: _energy(block(quantize(w, b, group_size, symmetric)
                                             .dequantize()) - reference) for b in widths}
        return w

    def observe(block: str, x: np.ndarray) -> None:
        stream[block] = _energy(x)

    def say(i: int) -> None:
        if progress is not None and ((i + 1) % 5 == 0 or i + 1 == c.num_layers):
            progress(f"  sensitivity: layer {i + 1}/{c.num_layers} "
                     f"[{time.perf_counter() - start:.0f} s]")

    calibrate.forward(ck, windows, measure, say, observe)
    out = {}
    for name, values in energy.items():
        yardstick = stream[name if name == "lm_head" else name.rsplit(".", 1)[0]]
        out[name] = {b: float(np.mean(e / yardstick)) for b, e in values.items()}
    return out


def choose(errors: Mapping[str, Mapping[int, float]], costs: Mapping[str, Mapping[int, int]],
           widths: Sequence[int], max_bytes: int) -> dict[str, int]:
    """Widths under ``max_bytes`` of planned-projection bytes (the module docstring's rule).

    ValueError when even the narrowest width does not fit.
    """
    bits = {name: widths[-1] for name in errors}
    total = sum(costs[n][b] for n, b in bits.items())
    step = {b: i for i, b in enumerate(widths)}
    while total > max_bytes:
        best = None
        for name, b in bits.items():
            if step[b] == 0:
                continue
            lower = widths[step[b] - 1]
            saved = costs[name][b] - costs[name][lower]
            added = max(errors[name][lower] - errors[name][b], 0.0)
            if saved > 0 and (best is None or added / saved < best[0]):
                best = (added / saved, name, lower, saved)
        if best is None:
            raise ValueError(f"the narrowest width needs {total} bytes, over {max_bytes}")
        _, name, bits[name], saved = best
        total -= saved
    while True:
        best = None
        for name, b in bits.items():
            if step[b] + 1 == len(widths):
                continue
            upper = widths[step[b] + 1]
            extra = costs[name][upper] - costs[name][b]
            gain = errors[name][b] - errors[name][upper]
            if gain > 0 and total + extra <= max_bytes and (
                    best is None or gain / max(extra, 1) > best[0]):
                best = (gain / max(extra, 1), name, upper, extra)
        if best is None:
            return bits
        _, name, bits[name], extra = best
        total += extra


def plan_decoder(ck: Checkpoint, names: Collection[str], max_size: int,
                 widths: Sequence[int], group_size: Any, symmetric: bool,
                 text: Callable[[], calibrate.CalibrationText], context: int,
                 table_dtype: type, table_bits: int | None, head: str,
                 say: Progress) -> DecoderPlan:
    """The plan for ``names`` (the projections a width is chosen for) under ``max_size``
    weight bytes; BadInputError naming the smallest possible size when it cannot fit.
    ``text`` gives the tokenized calibration text (read only when there is a choice)."""
    start = time.perf_counter()
    size = bundle_io.size_text
    costs = projection_costs(ck, names, widths, group_size, symmetric)
    other = other_weight_bytes(ck, names, context, table_dtype, table_bits, head)
    smallest = other + sum(c[widths[0]] for c in costs.values())
    largest = other + sum(c[widths[-1]] for c in costs.values())
    if smallest > max_size:
        raise BadInputError(
            f"--max-size {size(max_size)} cannot be met: with every projection at "
            f"{widths[0]} bits the weights need {size(smallest)} ({smallest} bytes; "
            f"{size(other)} of them outside the projections: embedding table, norms, RoPE "
            "tables, projections kept in float) — raise --max-size to at least that")
    say(f"planning widths under {size(max_size)}: {size(smallest)} with every projection at "
        f"{widths[0]} bits, {size(largest)} at {widths[-1]}")
    if largest <= max_size:
        bits = {name: widths[-1] for name in costs}
        errors = {name: {} for name in costs}
        tokens = 0
        say(f"  every projection fits at {widths[-1]} bits: nothing to plan")
    else:
        data = calibrate.windows_of(text())
        every = max(1, len(data.windows) * calibrate.DEFAULT_CTX // PLAN_TOKENS)
        windows = data.windows[::every][:max(1, PLAN_TOKENS // calibrate.DEFAULT_CTX)]
        tokens = sum(len(w) for w in windows)
        say(f"  measuring {len(costs)} projections at {', '.join(map(str, widths))} bits on "
            f"{tokens} calibration tokens")
        errors = sensitivities(ck, windows, costs, widths, group_size, symmetric, say)
        bits = choose(errors, costs, widths, max_size - other)
    plan = DecoderPlan(bits, errors, costs, other, max_size, tokens,
                       time.perf_counter() - start)
    say(f"  plan: {plan.summary()}; weights {size(plan.weight_bytes)}"
        + (f", estimated error {plan.estimate:.4f}" if tokens else ""))
    return plan


def _trace(d: np.ndarray, h: np.ndarray) -> float:
    """``tr(D H Dᵀ)`` = ``‖X Dᵀ‖²`` for ``H = XᵀX``."""
    return float(np.sum((d.astype(np.float32) @ h) * d, dtype=np.float64))


def _energy(x: np.ndarray) -> np.ndarray:
    """``‖x_t‖²`` per token (row)."""
    return np.sum(np.square(x, dtype=np.float64), axis=-1)


def _bytes(tensors: Mapping[str, np.ndarray]) -> int:
    return sum(int(t.nbytes) for t in tensors.values())


__all__ = ["PLAN_TOKENS", "WIDTHS", "DecoderPlan", "choose", "plan_decoder",
           "sensitivities", "widths_up_to"]
