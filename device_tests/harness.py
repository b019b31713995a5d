"""``edgepet bench`` on this machine: baselines, rounds of worker processes, the report.

Contenders are interleaved by round (round 1: every contender at every thread count,
then round 2, ...), each configuration in a process of its own, started only when the
previous one has exited — one session alive at a time, because an idle ONNX Runtime
worker pool spins and steals the cores the next one is timed on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgepet.device_tests import baselines as bl
from edgepet.device_tests import energy, environment
from edgepet.device_tests import report as rp
from edgepet.runtime import BadInputError, Bundle
from edgepet.targets import host_arch

Progress = Callable[[str], None]


@dataclass
class BenchOptions:
    """What ``edgepet bench`` was asked to do (the CLI's flags, parsed)."""

    bundle: str
    threads: list[int] = field(default_factory=lambda: [1])
    runs: int | None = None
    seconds: float | None = 3.0
    warmup: int = 3
    rounds: int = 3
    delay: float = 1.0
    baselines: list[str] = field(default_factory=lambda: list(bl.DEFAULT_BASELINES))
    energy: str = "auto"
    idle_seconds: float = 2.0
    adapter: str | None = None
    batch: str = "1"
    output: str | None = None
    float_model: str | None = None
    tflite: str | None = None
    python: str = sys.executable
    device: str = "local"

    def settings(self) -> dict[str, Any]:
        """The report's record of the options."""
        return {k: getattr(self, k) for k in (
            "threads", "runs", "seconds", "warmup", "rounds", "delay", "baselines", "energy",
            "idle_seconds", "adapter", "batch", "float_model", "tflite", "device")}


class Interrupted(Exception):
    """Ctrl-C during a run; the partial report was written."""


def default_output(bundle: str) -> Path:
    """``BUNDLE/reports/<UTC timestamp>/``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(bundle) / "reports" / stamp


def bench(options: BenchOptions, progress: Progress | None = None) -> tuple[dict, Path]:
    """Measure, write report.json/.md/.html into the output folder; return (report, folder).

    Raises :class:`BadInputError` when nothing could be measured (the CLI's exit 2).
    """
    say = progress or (lambda line: None)
    started = time.time()
    bundle = Bundle.open(options.bundle)  # checks files, hashes and the op ABI
    if options.adapter and options.adapter not in bundle.adapters:
        raise BadInputError(f"bundle {bundle.path} has no adapter {options.adapter!r} — its "
                            f"adapters: {', '.join(bundle.adapters) or 'none'}")
    out = Path(options.output) if options.output else default_output(options.bundle)
    out.mkdir(parents=True, exist_ok=True)
    unmeasured: list[dict[str, str]] = []
    arch = bundle.manifest["target"]["arch"]
    if arch != host_arch():
        unmeasured.append({"what": "target figures", "why": (
            f"the bundle was made for {bundle.target} ({arch}); this is {host_arch()}: the "
            "figures are this machine's, not the target's — run with --device on the target")})

    contenders = [bl.edgepet_contender(bundle, options.adapter)]
    wanted = [b for b in options.baselines if b != "none"]
    if wanted:
        say(f"building baselines: {', '.join(wanted)}")
        contenders += bl.build(wanted, bundle, out / "baselines", options.float_model,
                               options.tflite, progress=lambda m: say("  " + m))
    for c in contenders:
        if c.status != "ok":
            say(f"  {c.name}: unavailable — {c.reason}")
            unmeasured.append({"what": c.name, "why": c.reason or ""})

    meter_record = _probe_energy(options.energy)
    if meter_record["status"] == "unavailable":
        unmeasured.append({"what": "energy", "why": meter_record["reason"]})

    before = environment.state()
    results, interrupted = _rounds(options, bundle, contenders, meter_record, say)
    report = rp.build_report(
        bundle=bundle, contenders=contenders, results=results, settings=options.settings(),
        environment={**environment.describe(), "before": before, "after": environment.state()},
        energy_meter=meter_record, unmeasured=unmeasured, interrupted=interrupted,
        started=started)
    rp.write_all(report, out)
    if not any(r.get("n_runs") for r in report["results"]):
        raise BadInputError("nothing could be measured: " + "; ".join(
            f"{u['what']}: {u['why']}" for u in report["unmeasured"]) + f" (report in {out})")
    return report, out


def _probe_energy(spec: str) -> dict[str, Any]:
    if spec == "none":
        return {"name": None, "status": "unavailable", "reason": "not asked (--energy none)",
                "spec": spec}
    try:
        meter = energy.open_meter(spec)
    except energy.MeterUnavailable as error:
        return {"name": spec, "status": "unavailable", "reason": str(error), "spec": spec}
    except ValueError as error:
        raise BadInputError(str(error)) from None
    record = {**meter.describe(), "spec": spec}
    meter.close()
    return record


def _rounds(options: BenchOptions, bundle: Bundle, contenders: list[bl.Contender],
            meter: dict[str, Any], say: Progress) -> tuple[list[dict], bool]:
    ready = [c for c in contenders if c.status == "ok"]
    configs = [(c, t) for t in options.threads for c in ready]
    per_round_runs = math.ceil(options.runs / options.rounds) if options.runs else None
    per_round_s = options.seconds / options.rounds if not options.runs else None
    results: dict[tuple[str, int], list[dict]] = {(c.name, t): [] for c, t in configs}
    failed: dict[str, str] = {}
    total, done = options.rounds * len(configs), 0
    energy_spec = meter["spec"] if meter["status"] != "unavailable" else "none"
    adapters = [options.adapter] if options.adapter else (bundle.adapters or [None])
    try:
        for round_index in range(options.rounds):
            # Rotate the order each round so that no contender always runs first (coolest).
            shift = round_index % max(len(configs), 1)
            for contender, threads in configs[shift:] + configs[:shift]:
                done += 1
                if contender.name in failed:
                    continue
                spec = {
                    "bundle": str(bundle.path), "contender": contender.name,
                    "kind": contender.kind, "model": contender.model, "threads": threads,
                    "runs": per_round_runs, "seconds": per_round_s, "warmup": options.warmup,
                    "batch": options.batch, "adapter": options.adapter,
                    "energy": energy_spec, "idle_seconds": options.idle_seconds,
                    "accuracy": round_index == 0,
                    "adapters": adapters if contender.kind == "edgepet" else [None],
                }
                say(f"{_bar(done - 1, total)} round {round_index + 1}/{options.rounds} "
                    f"{contender.name} threads={threads}")
                try:
                    result = run_worker(spec, options.python)
                except WorkerFailed as error:
                    failed[contender.name] = str(error)
                    say(f"  {contender.name} failed: {error}")
                    continue
                results[(contender.name, threads)].append(result)
                median = sorted(result["samples_ns"])[len(result["samples_ns"]) // 2]
                say(f"  {len(result['samples_ns'])} runs, median {median / 1e6:.3f} ms")
                if options.delay > 0:
                    time.sleep(options.delay)
        say(f"{_bar(total, total)} done")
        interrupted = False
    except KeyboardInterrupt:
        say("interrupted: writing the report of what was measured")
        interrupted = True
    merged = []
    for (name, threads), rounds in results.items():
        merged.append(rp.merge_rounds(name, threads, rounds, failed.get(name)))
    return merged, interrupted


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class WorkerFailed(Exception):
    """A worker process exited without results; the message carries its last words."""


def run_worker(spec: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    """Run one configuration in a fresh process and return its measurements."""
    with tempfile.TemporaryDirectory(prefix="edgepet-bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        process = subprocess.Popen(
            [python, "-m", "edgepet.device_tests", "worker", str(spec_file), str(out_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _, err = process.communicate()
        except KeyboardInterrupt:
            process.kill()
            process.wait()
            raise
        if process.returncode != 0 or not out_file.is_file():
            tail = " ".join(err.strip().splitlines()[-3:]) if err else "no output"
            raise WorkerFailed(f"exit code {process.returncode}: {tail}")
        return json.loads(out_file.read_text())


__all__ = ["BenchOptions", "WorkerFailed", "bench", "default_output", "run_worker"]
