"""``edgepet bench``'s flags and handler (``edgepet.cli`` delegates here)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edgepet.runtime import BadInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Benchmark a bundle where it will run: cold load, first run, steady-state latency
(median, p90, p99, mean ± sd), throughput, peak memory (each contender in its own
process), size, bits per weight, energy where a meter exists, and accuracy against
the bundle's reference/ — against ONNX Runtime fp32, ORT's own MatMulNBits at 4 and 2
bits, and LiteRT. Writes report.json, report.md and report.html (docs/bench.md).
"""

EPILOG = """\
examples:
  edgepet bench out/                                   # this machine, default baselines
  edgepet bench out/ --threads 1,2,4 --seconds 10      # 10 s per configuration
  edgepet bench out/ --device ssh://pi@raspberrypi.local --suite rpi5
  edgepet bench out/ --energy csv:meter.csv            # an external meter's log
  edgepet bench --compare before/report.json after/report.json
exit codes: 0 measured, 1 a --suite floor was missed, 2 bad input / nothing measured,
130 Ctrl-C (the report of what was measured is written)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``edgepet bench`` (and ``python -m edgepet.device_tests bench``)."""
    p.add_argument("bundle", nargs="?", help="bundle folder")
    p.add_argument("--device", default="local",
                   help="local (default), ssh://USER@HOST[:PORT] or adb[:SERIAL]")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and all cores)")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--runs", type=int, help="timed runs per configuration")
    runs.add_argument("--seconds", type=float,
                      help="seconds of timed runs per configuration (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds the runs are split into (default 3)")
    p.add_argument("--delay", type=float, default=1.0,
                   help="cool-down seconds between configurations (default 1)")
    p.add_argument("--baselines", default="ort-fp32,ort-nbits4,ort-nbits2,litert",
                   help="comma-separated: ort-fp32, ort-nbits4, ort-nbits2, litert, or none")
    p.add_argument("--energy", default="auto",
                   help="auto, rapl, rpi5-pmic, android-battery, powermetrics, csv:FILE, none")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="idle baseline measured before each run when a meter is used")
    p.add_argument("--adapter", help="time this task's adapter (accuracy covers them all)")
    p.add_argument("--batch", choices=("1", "full"), default="1",
                   help="time one reference item (default) or the whole reference batch")
    p.add_argument("--float-model", metavar="FILE.onnx",
                   help="the original float graph to build the baselines from (default: "
                        "rebuilt from the bundle's dequantized weights)")
    p.add_argument("--tflite", metavar="FILE", help="the .tflite model for the litert baseline")
    p.add_argument("--suite", help="rpi5, android, apple or a suite .toml: exit 1 when a floor "
                                   "is missed")
    p.add_argument("-o", "--output", help="report folder (default BUNDLE/reports/<time>/)")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print two reports side by side (and write compare.md/.html to -o)")
    p.add_argument("--remote-python", default="python3",
                   help="the Python that has edgepet on an ssh device (default python3)")
    p.add_argument("--native-runner", metavar="PATH|auto",
                   help="an edgepet-run built for the device, used when it has no Python "
                        "with edgepet (auto: the one built here, for a device like this one)")
    p.add_argument("--remote-onnxruntime", metavar="PATH",
                   help="libonnxruntime on the device, for --native-runner (default: the "
                        "library path)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ssh -o options, e.g. IdentityFile=~/.ssh/pi; repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _threads(text: str | None) -> list[int]:
    import os

    if text is None:
        cores = os.cpu_count() or 1
        return [1] if cores == 1 else [1, cores]
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInputError(f"--threads {text!r}: give comma-separated integers, e.g. 1,2,4") \
            from None
    if not values or min(values) < 1:
        raise BadInputError(f"--threads {text!r}: thread counts must be at least 1")
    return values


def options_from(args: argparse.Namespace):
    """BenchOptions from parsed flags."""
    from edgepet.device_tests.harness import BenchOptions

    if args.runs is not None and args.runs < 1:
        raise BadInputError("--runs must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        raise BadInputError("--seconds must be positive")
    if args.rounds < 1 or args.warmup < 0 or args.delay < 0:
        raise BadInputError("--rounds must be at least 1, --warmup and --delay not negative")
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    from edgepet.device_tests.baselines import BASELINES

    unknown = [b for b in names if b not in (*BASELINES, "none")]
    if unknown:
        raise BadInputError(f"--baselines: unknown {', '.join(unknown)}; known: "
                            f"{', '.join(BASELINES)}, none")
    return BenchOptions(
        bundle=args.bundle, threads=_threads(args.threads), runs=args.runs,
        seconds=None if args.runs else (args.seconds or 3.0), warmup=args.warmup,
        rounds=args.rounds, delay=args.delay, baselines=names, energy=args.energy,
        idle_seconds=args.idle_seconds, adapter=args.adapter, batch=args.batch,
        output=args.output, float_model=args.float_model, tflite=args.tflite,
        device=args.device)


def run(args: argparse.Namespace) -> int:
    """Handle ``edgepet bench``; BadInputError propagates (the caller exits 2)."""
    from edgepet.device_tests import report as rp

    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.compare:
        a, b = (rp.load(p) for p in args.compare)
        text = rp.compare_markdown(a, b, names=tuple(Path(p).parent.name or p
                                                     for p in args.compare))
        print(text, end="")
        if args.output:
            rp.write_compare(a, b, text, Path(args.output))
        return EXIT_OK
    if not args.bundle:
        raise BadInputError("give a bundle folder (or --compare A.json B.json)")
    options = options_from(args)
    suite = None
    if args.suite:
        from edgepet.device_tests import suites

        suite = suites.load(args.suite)
    if options.device == "local":
        from edgepet.device_tests.harness import bench

        report, out = bench(options, progress)
    else:
        from edgepet.device_tests import remote

        report, out = remote.bench_remote(options, args, progress)
    code = EXIT_OK
    if suite is not None:
        from edgepet.device_tests import suites

        report["suite"] = suites.evaluate(suite, report)
        rp.write_all(report, out)
        code = EXIT_OK if report["suite"]["passed"] else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(summary(report, out))
    if report.get("interrupted"):
        print("interrupted: the report holds what was measured before Ctrl-C", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if suite is not None and code != EXIT_OK:
        failed = [c for c in report["suite"]["checks"] if c["status"] == "FAIL"]
        for check in failed:
            print(f"suite {report['suite']['name']}: FAIL {check['what']} — {check['detail']}",
                  file=sys.stderr)
    return code


def summary(report: dict, out: Path) -> str:
    """The short table printed at the end."""
    lines = [f"{report['cpu_info']}, {report['environment']['n_cpus']} CPUs — load "
             f"{report['environment']['after']['load_average']}",
             f"{'contender':<12} {'threads':>7} {'median ms':>10} {'inf/s':>9} "
             f"{'peak MB':>8} {'rel.err':>8}"]
    for r in report["results"]:
        if not r.get("n_runs"):
            lines.append(f"{r['contender']:<12} {r['n_threads']:>7} not measured: {r['error']}")
            continue
        acc = r.get("accuracy")
        err = f"{acc[0]['vs_pytorch']['relative_error']:.4f}" if acc else "—"
        lines.append(f"{r['contender']:<12} {r['n_threads']:>7} {r['median_ns'] / 1e6:>10.3f} "
                     f"{r['avg_ts']:>9.1f} {r['peak_rss_bytes'] / 1e6:>8.1f} {err:>8}")
    for c in report["comparisons"]:
        lines.append(f"edgepet vs {c['baseline']} at {c['n_threads']} threads: "
                     f"{c['speedup']:.2f}× speed" + (f" ({c['note']})" if c.get("note") else ""))
    for u in report["unmeasured"]:
        lines.append(f"not measured — {u['what']}: {u['why']}")
    lines.append(f"report: {out}/report.md, report.html, report.json")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``python -m edgepet.device_tests {bench,worker} ...``."""
    if argv and argv[0] == "worker":
        from edgepet.device_tests.worker import main as worker_main

        return worker_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(prog="python -m edgepet.device_tests bench",
                                     description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("bench", description=DESCRIPTION))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BadInputError as error:
        print(f"edgepet bench: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main", "options_from", "run"]
