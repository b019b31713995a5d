"""report.json (schema ``report.schema.json``, names after llama-bench where they mean
the same), report.md (tables for a pull request) and report.html (html.py)."""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgepet.runtime import BadInputError

SCHEMA_ID = "edgepet.bench"
#: Bumped when a field changes meaning or a required field is added.
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


def _percentile(sorted_values: list[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(samples_ns: list[int], batch: int) -> dict[str, Any]:
    """Median, p90, p99, mean ± sd of the samples, and throughput as llama-bench words it."""
    s = sorted(samples_ns)
    rates = [batch * 1e9 / x for x in samples_ns if x > 0]
    return {
        "n_runs": len(s), "median_ns": _percentile(s, 0.5), "p90_ns": _percentile(s, 0.9),
        "p99_ns": _percentile(s, 0.99), "avg_ns": statistics.fmean(s),
        "stddev_ns": statistics.stdev(s) if len(s) > 1 else 0.0, "min_ns": s[0],
        "max_ns": s[-1], "avg_ts": statistics.fmean(rates),
        "stddev_ts": statistics.stdev(rates) if len(rates) > 1 else 0.0,
    }


def merge_rounds(name: str, threads: int, rounds: list[dict], error: str | None) -> dict:
    """One result per (contender, threads) from its rounds' worker results."""
    result: dict[str, Any] = {"contender": name, "n_threads": threads, "n_rounds": len(rounds),
                              "error": error}
    if not rounds:
        return {**result, "n_runs": 0}
    samples = [x for r in rounds for x in r["samples_ns"]]
    batch = rounds[0]["batch"]
    result.update(latency_stats(samples, batch))
    result.update({
        "batch": batch, "samples_ns": samples,
        "load_ns": [r["load_ns"] for r in rounds],
        "first_run_ns": [r["first_run_ns"] for r in rounds],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rounds),
        "rss_before_load_bytes": min((r["rss_before_load_bytes"] or 0) for r in rounds) or None,
        "huge_pages_bytes": min((r["huge_pages_bytes"] for r in rounds
                                 if r.get("huge_pages_bytes") is not None), default=None),
        "accuracy": next((r["accuracy"] for r in rounds if r.get("accuracy")), None),
        "energy": _merge_energy([r.get("energy") for r in rounds]),
    })
    return result


def _merge_energy(readings: list[dict | None]) -> dict | None:
    measured = [e for e in readings if e and "joules_per_inference" in e]
    if not measured:
        return next((e for e in readings if e), None)
    merged = dict(measured[-1])
    merged.pop("window", None)
    per = [e["joules_per_inference"] for e in measured]
    merged.update({
        "joules_per_inference": statistics.fmean(per),
        "joules_per_inference_rounds": per,
        "run_watts": statistics.fmean(e["run_watts"] for e in measured),
        "idle_watts": statistics.fmean(e["idle_watts"] for e in measured),
        "inferences": sum(e["inferences"] for e in measured),
    })
    return merged


def _headline_error(result: dict) -> float | None:
    acc = result.get("accuracy")
    return acc[0]["vs_pytorch"]["relative_error"] if acc else None


def comparisons(results: list[dict]) -> list[dict]:
    """edgepet against each baseline at the same thread count: speed next to accuracy."""
    by = {(r["contender"], r["n_threads"]): r for r in results if r.get("n_runs")}
    rows = []
    for (name, threads), base in sorted(by.items()):
        mine = by.get(("edgepet", threads))
        if name == "edgepet" or mine is None:
            continue
        e_err, b_err = _headline_error(mine), _headline_error(base)
        speedup = base["median_ns"] / mine["median_ns"]
        row = {"baseline": name, "n_threads": threads, "speedup": speedup,
               "edgepet_median_ns": mine["median_ns"], "baseline_median_ns": base["median_ns"],
               "edgepet_relative_error": e_err, "baseline_relative_error": b_err,
               "memory_ratio": base["peak_rss_bytes"] / mine["peak_rss_bytes"]}
        e_j, b_j = _joules(mine), _joules(base)
        row["energy_ratio"] = b_j / e_j if e_j and b_j and e_j > 0 else None
        if speedup < 1 and e_err is not None and b_err is not None:
            row["note"] = ("baseline faster and more accurate" if b_err <= e_err
                           else "baseline faster but less accurate")
        elif e_err is not None and b_err is not None and b_err < e_err:
            row["note"] = "edgepet faster, baseline more accurate"
        rows.append(row)
    return rows


def _joules(result: dict) -> float | None:
    e = result.get("energy") or {}
    return e.get("joules_per_inference")


def build_report(*, bundle, contenders, results, settings, environment, energy_meter,
                 unmeasured, interrupted, started) -> dict[str, Any]:
    """The report.json document."""
    m = bundle.manifest
    for r in results:
        if r.get("error"):
            unmeasured.append({"what": f"{r['contender']} at {r['n_threads']} threads",
                               "why": r["error"]})
    return {
        "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "test_time": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "duration_s": datetime.now(timezone.utc).timestamp() - started,
        "interrupted": interrupted,
        "bundle": {
            "path": str(bundle.path), "target": bundle.target,
            "target_arch": m["target"]["arch"], "bits": m["quantization"]["bits"],
            "group_size": m["quantization"]["group_size"],
            "op_abi_version": m["operator"]["abi_version"], "adapters": bundle.adapters,
            "inputs": m["inputs"], "outputs": m["outputs"],
            "edgepet_version": m["edgepet_version"],
            "tolerance": m["reference"]["tolerance"],
        },
        "cpu_info": environment["cpu_info"],
        "environment": environment,
        "settings": settings,
        "energy_meter": energy_meter,
        "contenders": [c.to_dict() for c in contenders],
        "results": results,
        "comparisons": comparisons(results),
        "unmeasured": unmeasured,
    }


# --- Markdown ------------------------------------------------------------------------------------


def _ms(ns: float | None) -> str:
    return "—" if ns is None else f"{ns / 1e6:.3f}"


def _mb(b: float | None) -> str:
    return "—" if not b else f"{b / 1e6:.1f}"


def _added(result: dict) -> str:
    """Peak RSS minus the process's RSS before the session was created."""
    before = result.get("rss_before_load_bytes")
    return _mb(result["peak_rss_bytes"] - before) if before else "—"


def _huge(result: dict) -> str:
    """Huge-page memory the session added ("0.0" where none; "—" where unknown)."""
    huge = result.get("huge_pages_bytes")
    return "—" if huge is None else f"{huge / 1e6:.1f}"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    """report.md: what a pull request or an issue note needs, in tables."""
    env = report["environment"]
    b = report["bundle"]
    lines = [
        f"# edgepet bench — {Path(b['path']).name}",
        "",
        f"- bundle: `{b['path']}` — target {b['target']} ({b['target_arch']}), {b['bits']}-bit, "
        f"group {b['group_size']}, op ABI {b['op_abi_version']}",
        f"- device: {report['settings']['device']} — **{report['cpu_info']}**, "
        f"{env['n_cpus']} CPUs, {env['arch']}, {env['os']}, transparent huge pages "
        f"{env.get('transparent_hugepages') or 'none'}",
        f"- ISA: {' '.join(_isa_short(env['isa_features']))}",
        f"- load average before/after: {env['before']['load_average']} / "
        f"{env['after']['load_average']}; governor {env['before']['clocks']['governor']}; "
        f"temperature before/after {env['before']['temperature_c']} / "
        f"{env['after']['temperature_c']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()
                                     if k != "op_library_error"),
        f"- settings: threads {report['settings']['threads']}, "
        + (f"{report['settings']['runs']} runs" if report["settings"]["runs"]
           else f"{report['settings']['seconds']} s") +
        f" per configuration in {report['settings']['rounds']} interleaved rounds, warm-up "
        f"{report['settings']['warmup']}, delay {report['settings']['delay']} s, batch "
        f"{report['settings']['batch']}",
        f"- started {report['test_time']}, took {report['duration_s']:.0f} s"
        + (" — **interrupted (Ctrl-C): partial results**" if report["interrupted"] else ""),
        "",
        "## Latency and throughput",
        "",
        "| contender | threads | runs | median ms | p90 ms | p99 ms | mean ± sd ms | "
        "inferences/s | cold load ms | first run ms | peak RSS MB | RSS added MB | "
        "in huge pages MB | size MB | bits/weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    contenders = {c["name"]: c for c in report["contenders"]}
    for r in report["results"]:
        c = contenders[r["contender"]]
        if not r.get("n_runs"):
            lines.append(f"| {r['contender']} | {r['n_threads']} | 0 | not measured: "
                         f"{r.get('error')} |||||||||||")
            continue
        lines.append(
            f"| {r['contender']} | {r['n_threads']} | {r['n_runs']} | {_ms(r['median_ns'])} | "
            f"{_ms(r['p90_ns'])} | {_ms(r['p99_ns'])} | {_ms(r['avg_ns'])} ± "
            f"{_ms(r['stddev_ns'])} | {r['avg_ts']:.1f} | "
            f"{_ms(statistics.median(r['load_ns']))} | "
            f"{_ms(statistics.median(r['first_run_ns']))} | {_mb(r['peak_rss_bytes'])} | "
            f"{_added(r)} | {_huge(r)} | "
            f"{_mb(c['model_bytes'])} | {_num(c['bits_per_weight'], '.2f')} |")
    lines += ["", "## edgepet against each baseline (same device, same inputs, same threads)",
              "", "speed-up = baseline median / edgepet median (above 1: edgepet faster); "
              "relative error against the fp32 PyTorch reference.", "",
              "| baseline | threads | speed-up | edgepet error | baseline error | memory ratio "
              "| energy ratio | note |", "|---|---|---|---|---|---|---|---|"]
    for row in report["comparisons"]:
        lines.append(
            f"| {row['baseline']} | {row['n_threads']} | {row['speedup']:.2f}× | "
            f"{_num(row['edgepet_relative_error'])} | {_num(row['baseline_relative_error'])} | "
            f"{row['memory_ratio']:.2f}× | "
            f"{_num(row['energy_ratio'], '.2f') + '×' if row['energy_ratio'] else '—'} | "
            f"{row.get('note', '')} |")
    lines += ["", "## Accuracy against reference/", "",
              "| contender | threads | adapter | rel. error vs PyTorch | max abs | cosine | "
              "top-1 | rel. error vs dequantized graph |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        for a in r.get("accuracy") or []:
            p, q = a["vs_pytorch"], a["vs_dequantized"]
            lines.append(
                f"| {r['contender']} | {r['n_threads']} | {a['adapter'] or 'default'} | "
                f"{_num(p['relative_error'])} | {_num(p['max_abs_error'])} | "
                f"{_num(p['cosine'], '.6f')} | {_num(p['top1_agreement'], '.3f')} | "
                f"{_num(q['relative_error'])} |")
    lines += ["", "## Energy", ""]
    meter = report["energy_meter"]
    if meter["status"] == "unavailable":
        lines.append(f"unavailable — {meter['reason']}")
    else:
        label = " (Apple's **estimates**, not measurements)" if meter["status"] == "estimate" \
            else ""
        lines += [f"meter: {meter['name']}{label} — {meter['method']}; limits: "
                  f"{meter['limits']}; an idle baseline measured just before each run is "
                  "subtracted.", "", "| contender | threads | J/inference | W during run | "
                  "W idle |", "|---|---|---|---|---|"]
        for r in report["results"]:
            e = r.get("energy") or {}
            if "joules_per_inference" in e:
                lines.append(f"| {r['contender']} | {r['n_threads']} | "
                             f"{e['joules_per_inference']:.4g} | {e['run_watts']:.3f} | "
                             f"{e['idle_watts']:.3f} |")
            elif e:
                lines.append(f"| {r['contender']} | {r['n_threads']} | unavailable: "
                             f"{e.get('reason')} | | |")
    lines += ["", "## Contenders", ""]
    for c in report["contenders"]:
        state = "" if c["status"] == "ok" else f" — **unavailable**: {c['reason']}"
        lines.append(f"- `{c['name']}`: {c['description']}{state}")
    if report["unmeasured"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {u['what']}: {u['why']}" for u in report["unmeasured"]]
    if report.get("suite"):
        lines += ["", suite_markdown(report["suite"])]
    return "\n".join(lines) + "\n"


def suite_markdown(suite: dict[str, Any]) -> str:
    """The suite's checks as a list."""
    lines = [f"## Suite {suite['name']}: {'passed' if suite['passed'] else 'FAILED'}", ""]
    for check in suite["checks"]:
        lines.append(f"- {check['status']}: {check['what']} — {check['detail']}")
    return "\n".join(lines)


def _isa_short(flags: list[str]) -> list[str]:
    interesting = ("avx", "fma", "f16c", "sse4", "neon", "asimd", "sve", "i8mm", "dotprod",
                   "bf16", "vnni", "fp16", "amx")
    picked = [f for f in flags if any(f.startswith(i) or i in f for i in interesting)]
    return picked or flags


# --- files ---------------------------------------------------------------------------------------


def write_all(report: dict[str, Any], out: Path, html: bool = True) -> None:
    """report.json, report.md and (when matplotlib is there) report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    if html:
        from edgepet.device_tests import html as page

        (out / "report.html").write_text(page.render(report))


def load(path: str | Path) -> dict[str, Any]:
    """A report.json, checked for its schema id and version."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path} is not a readable report.json ({error})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA_ID:
        raise BadInputError(f"{path} is not an edgepet bench report")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(f"{path} has report schema version {report.get('schema_version')};"
                            f" this edgepet reads version {SCHEMA_VERSION}")
    return report


def compare_markdown(a: dict[str, Any], b: dict[str, Any], names=("A", "B")) -> str:
    """Two reports side by side: each configuration's median and error, and B/A."""
    def rows(report):
        return {(r["contender"], r["n_threads"]): r for r in report["results"]
                if r.get("n_runs")}

    ra, rb = rows(a), rows(b)
    lines = [f"# edgepet bench: {names[0]} vs {names[1]}", "",
             f"- {names[0]}: {a['cpu_info']} — {a['bundle']['path']} ({a['test_time']})",
             f"- {names[1]}: {b['cpu_info']} — {b['bundle']['path']} ({b['test_time']})", "",
             f"| contender | threads | {names[0]} median ms | {names[1]} median ms | "
             f"{names[1]}/{names[0]} time | {names[0]} inf/s | {names[1]} inf/s | "
             f"{names[0]} error | {names[1]} error |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(set(ra) | set(rb)):
        x, y = ra.get(key), rb.get(key)
        ratio = f"{y['median_ns'] / x['median_ns']:.2f}×" if x and y else "—"
        lines.append(
            f"| {key[0]} | {key[1]} | {_ms(x['median_ns']) if x else '—'} | "
            f"{_ms(y['median_ns']) if y else '—'} | {ratio} | "
            f"{_num(x['avg_ts'], '.1f') if x else '—'} | "
            f"{_num(y['avg_ts'], '.1f') if y else '—'} | "
            f"{_num(_headline_error(x)) if x else '—'} | "
            f"{_num(_headline_error(y)) if y else '—'} |")
    return "\n".join(lines) + "\n"


__all__ = ["SCHEMA_FILE", "SCHEMA_ID", "SCHEMA_VERSION", "build_report", "compare_markdown",
           "comparisons", "latency_stats", "load", "markdown", "merge_rounds", "write_all"]


def write_compare(a: dict[str, Any], b: dict[str, Any], text: str, out: Path) -> None:
    """compare.md and a self-contained compare.html in ``out``."""
    from edgepet.device_tests import html as page

    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    (out / "compare.html").write_text(page.render_compare(text))
