"""One contender, one thread count, one process: load, first run, warm-up, timed runs,
peak memory, energy and accuracy — what the harness asks of each configuration.

The harness starts ``python -m edgepet.device_tests worker SPEC.json OUT.json`` so that
every contender has a heap (and an ONNX Runtime thread pool) of its own and no other
session is alive while it runs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.runtime import Bundle
from edgepet.runtime.bundle import output_metrics, relative_error

# --- memory -------------------------------------------------------------------------------------


def _proc_bytes(field: str, file: str = "/proc/self/status") -> int | None:
    """A "Field: N kB" line of a /proc file, in bytes; None where there is none."""
    try:
        for line in Path(file).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS mark (Linux ``clear_refs``); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss() -> int | None:
    """Resident bytes now (Linux); None elsewhere."""
    return _proc_bytes("VmRSS")


def huge_page_bytes() -> int | None:
    """This process's anonymous memory in transparent huge pages now (Linux
    ``AnonHugePages``); None elsewhere. edgepet's op puts its weights there when a session
    starts (docs/operator.md, "Huge pages")."""
    return _proc_bytes("AnonHugePages", "/proc/self/smaps_rollup")


def peak_rss() -> int:
    """Peak resident bytes of this process (VmHWM on Linux, ru_maxrss elsewhere)."""
    hwm = _proc_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# --- sessions -----------------------------------------------------------------------------------


class Runner:
    """What the worker needs of a contender: outputs in the bundle's output order."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def set_adapter(self, name: str | None) -> None:
        if name is not None:
            raise ValueError("this contender has no adapters")


class EdgepetRunner(Runner):
    def __init__(self, bundle: Bundle, threads: int) -> None:
        self.session = bundle.session(threads)
        self.outputs = [o["name"] for o in bundle.manifest["outputs"]]

    def run(self, feeds):
        got = self.session.run(feeds)
        return [got[n] for n in self.outputs]

    def set_adapter(self, name):
        self.session.set_adapter(name)


class OrtRunner(Runner):
    def __init__(self, model: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds):
        values = list(feeds.values())
        named = {name: feeds.get(name, values[i]) for i, name in enumerate(self.inputs)}
        return self.session.run(None, named)


class LiteRTRunner(Runner):
    def __init__(self, model: str, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def run(self, feeds):
        values = list(feeds.values())
        fixed = self.inputs[0]["shape_signature"]
        if values and len(fixed) and fixed[0] == 1 and values[0].shape[0] > 1:
            # Converted with a static batch of 1 (litert-torch's default): item by item.
            items = [self.run({k: v[i:i + 1] for k, v in feeds.items()})
                     for i in range(values[0].shape[0])]
            return [np.concatenate(parts) for parts in zip(*items, strict=True)]
        for detail, value in zip(self.inputs, values, strict=True):
            self.interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.outputs]


def open_runner(kind: str, model: str, threads: int, bundle: Bundle) -> Runner:
    """A session for a contender of ``kind`` ("edgepet", "ort", "litert")."""
    if kind == "edgepet":
        return EdgepetRunner(bundle, threads)
    if kind == "ort":
        return OrtRunner(model, threads)
    if kind == "litert":
        return LiteRTRunner(model, threads)
    raise ValueError(f"unknown contender kind {kind!r}")


# --- accuracy -----------------------------------------------------------------------------------


def compare(y: list[np.ndarray], ref: list[np.ndarray], spec: dict[str, Any] | None = None,
            names: list[str] | None = None) -> dict[str, Any]:
    """Max abs and relative error, cosine similarity, and top-1 agreement where it means
    something: the bundle's output metrics (``spec``, the manifest's ``reference.metrics``)
    give it for logits of enough rows only, never for embeddings. Without ``spec`` (bundles
    older than it) any float output of two or more classes counts as logits."""
    flat_y = np.concatenate([np.asarray(a, np.float64).ravel() for a in y])
    flat_r = np.concatenate([np.asarray(b, np.float64).ravel() for b in ref])
    norms = float(np.linalg.norm(flat_y) * np.linalg.norm(flat_r))
    first, first_ref = np.asarray(y[0]), np.asarray(ref[0])
    top1 = None
    if spec is not None:
        _, metrics, _ = output_metrics(spec, names or [], y, ref)
        top1 = metrics.get("top1_agreement")
    elif first.ndim >= 2 and first.shape[-1] >= 2 and first.dtype.kind == "f":
        top1 = float(np.mean(np.argmax(first, -1) == np.argmax(first_ref, -1)))
    return {
        "max_abs_error": float(np.max(np.abs(flat_y - flat_r))) if flat_y.size else 0.0,
        "relative_error": relative_error(y, ref),
        "cosine": float(flat_y @ flat_r / norms) if norms > 0 else None,
        "top1_agreement": top1,
    }


def accuracy(runner: Runner, bundle: Bundle, adapters: list[str | None]) -> list[dict]:
    """Errors against the bundle's fp32 PyTorch and dequantized-graph references."""
    inputs = bundle.reference_inputs()
    names = [o["name"] for o in bundle.manifest["outputs"]]
    results = []
    for adapter in adapters:
        runner.set_adapter(adapter)
        got = runner.run(inputs)
        fp32, quant = bundle.reference_outputs(adapter)
        spec = bundle.manifest.get("reference", {}).get("metrics")
        results.append({
            "adapter": adapter,
            "vs_pytorch": compare(got, [fp32[n] for n in names], spec, names),
            "vs_dequantized": compare(got, [quant[n] for n in names], spec, names),
        })
    return results


# --- the timed part -------------------------------------------------------------------------------


def timing_inputs(bundle: Bundle, batch: str) -> tuple[dict[str, np.ndarray], int]:
    """Inputs for the timed runs: the first reference item (``batch="1"``) or them all."""
    inputs = bundle.reference_inputs()
    declared = {i["name"]: i["shape"] for i in bundle.manifest["inputs"]}
    sizes = {v.shape[0] for v in inputs.values() if v.ndim}
    dynamic = all(declared.get(n) and not isinstance(declared[n][0], int) for n in inputs)
    if batch == "1" and dynamic and sizes and min(sizes) > 1:
        return {n: np.ascontiguousarray(v[:1]) for n, v in inputs.items()}, 1
    return inputs, (min(sizes) if sizes else 1)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration as ``spec`` describes; return the measurements."""
    bundle = Bundle.open(spec["bundle"], check_files=False)
    threads = int(spec["threads"])
    feeds, batch = timing_inputs(bundle, spec.get("batch", "1"))
    result: dict[str, Any] = {"contender": spec["contender"], "n_threads": threads,
                              "batch": batch, "pid": os.getpid()}
    meter, idle = _energy_idle(spec, result)
    result["peak_rss_reset"] = reset_peak_rss()
    result["rss_before_load_bytes"] = current_rss()
    huge_before = huge_page_bytes()

    start = time.perf_counter_ns()
    runner = open_runner(spec["kind"], spec["model"], threads, bundle)
    result["load_ns"] = time.perf_counter_ns() - start
    if spec.get("adapter"):
        runner.set_adapter(spec["adapter"])
    start = time.perf_counter_ns()
    runner.run(feeds)
    result["first_run_ns"] = time.perf_counter_ns() - start
    for _ in range(int(spec.get("warmup", 0))):
        runner.run(feeds)

    runs, seconds = spec.get("runs"), spec.get("seconds")
    samples: list[int] = []
    if meter is not None:
        meter.begin()
    began = time.perf_counter()
    while not samples or (len(samples) < runs if runs else
                          time.perf_counter() - began < seconds):
        t0 = time.perf_counter_ns()
        runner.run(feeds)
        samples.append(time.perf_counter_ns() - t0)
    if meter is not None:
        _energy_run(meter, idle, len(samples), result)
    result["samples_ns"] = samples
    result["peak_rss_bytes"] = peak_rss()
    huge_after = huge_page_bytes()
    result["huge_pages_bytes"] = (max(huge_after - huge_before, 0)
                                  if huge_before is not None and huge_after is not None else None)
    if spec.get("accuracy"):
        adapters = spec.get("adapters") or [None]
        result["accuracy"] = accuracy(runner, bundle, adapters)
    return result


def _energy_idle(spec: dict[str, Any], result: dict[str, Any]):
    from edgepet.device_tests import energy

    if spec.get("energy", "none") == "none":
        return None, None
    try:
        meter = energy.open_meter(spec["energy"])
        idle = energy.measure_idle(meter, float(spec.get("idle_seconds", 2.0)))
    except energy.MeterUnavailable as error:
        result["energy"] = {"status": "unavailable", "reason": str(error)}
        return None, None
    return meter, idle


def _energy_run(meter, idle, n: int, result: dict[str, Any]) -> None:
    from edgepet.device_tests import energy

    try:
        run = meter.end()
    except energy.MeterUnavailable as error:
        result["energy"] = {"status": "unavailable", "reason": str(error)}
        return
    finally:
        meter.close()
    net = run.joules - idle.watts * run.seconds
    result["energy"] = {
        **meter.describe(), "idle_watts": idle.watts, "idle_seconds": idle.seconds,
        "run_joules": run.joules, "run_seconds": run.seconds, "run_watts": run.watts,
        "net_joules": net, "joules_per_inference": net / n, "inferences": n,
        "window": [run.start, run.end],
    }


def main(spec_file: str, out_file: str) -> int:
    """``python -m edgepet.device_tests worker SPEC.json OUT.json``."""
    spec = json.loads(Path(spec_file).read_text())
    result = measure(spec)
    Path(out_file).write_text(json.dumps(result))
    return 0


__all__ = ["accuracy", "compare", "huge_page_bytes", "measure", "open_runner", "peak_rss",
           "timing_inputs"]
