"""Per-device suites: floors a bench report must meet (``suites/*.toml``).

A suite names the device's architecture, a throughput floor relative to a baseline
measured in the same run, accuracy bounds, an energy ratio where a meter exists and a
memory ratio. :func:`evaluate` turns a report into PASS / FAIL / SKIP checks with the
reason for each; ``edgepet bench --suite`` exits 1 when one fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepet.runtime import BadInputError

SUITES_DIR = Path(__file__).with_name("suites")


def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise BadInputError("reading a suite needs Python 3.11+ or `pip install tomli`") \
                from None
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BadInputError(f"suite {path} cannot be read: {error}") from None


def names() -> list[str]:
    """The suites shipped with edgepet."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load(name_or_file: str) -> dict[str, Any]:
    """A shipped suite by name (rpi5, android, apple) or a .toml file."""
    path = Path(name_or_file)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_file}.toml"
    if not path.is_file():
        raise BadInputError(f"--suite {name_or_file!r}: not a file and not one of "
                            f"{', '.join(names())}")
    suite = _toml(path)
    if "suite" not in suite or "name" not in suite["suite"]:
        raise BadInputError(f"suite {path} has no [suite] table with a name")
    suite["file"] = str(path)
    return suite


def _check(checks: list, what: str, status: str, detail: str) -> None:
    checks.append({"what": what, "status": status, "detail": detail})


def evaluate(suite: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """PASS/FAIL/SKIP per floor; ``passed`` when nothing failed."""
    checks: list[dict[str, str]] = []
    arch = suite["suite"].get("arch")
    measured_on = report["environment"]["arch"]
    if arch and {"arm64": "aarch64"}.get(measured_on, measured_on) != arch:
        _check(checks, "device", "FAIL", f"the suite is for {arch}; this report was measured "
               f"on {measured_on}")
    results = {(r["contender"], r["n_threads"]): r for r in report["results"]
               if r.get("n_runs")}
    mine = {t: r for (name, t), r in results.items() if name == "edgepet"}
    if not mine:
        _check(checks, "edgepet", "FAIL", "edgepet itself was not measured")
    _throughput(suite.get("throughput"), mine, results, report, checks)
    _accuracy(suite.get("accuracy"), mine, report, checks)
    _energy(suite.get("energy"), mine, results, report, checks)
    _memory(suite.get("memory"), mine, results, checks)
    return {"name": suite["suite"]["name"], "file": suite["file"],
            "passed": not any(c["status"] == "FAIL" for c in checks), "checks": checks}


def _baseline_missing(name: str, report: dict[str, Any]) -> str:
    for c in report["contenders"]:
        if c["name"] == name and c["status"] != "ok":
            return f"{name} was not measured: {c['reason']}"
    return f"{name} was not measured (not in --baselines, or its runs failed)"


def _throughput(rule, mine, results, report, checks) -> None:
    if not rule:
        return
    base, floor = rule["baseline"], float(rule["min_speedup"])
    for threads, r in sorted(mine.items()):
        other = results.get((base, threads))
        what = f"throughput vs {base} at {threads} threads"
        if other is None:
            _check(checks, what, "FAIL", _baseline_missing(base, report))
            continue
        speedup = other["median_ns"] / r["median_ns"]
        _check(checks, what, "PASS" if speedup >= floor else "FAIL",
               f"{speedup:.2f}x (median {r['median_ns'] / 1e6:.3f} ms against "
               f"{other['median_ns'] / 1e6:.3f} ms); floor {floor:.2f}x")


def _accuracy(rule, mine, report, checks) -> None:
    if not rule or not mine:
        return
    r = mine[min(mine)]
    limit = rule.get("max_relative_error_vs_pytorch")
    if limit == "manifest":
        limit = report["bundle"].get("tolerance", {}).get("vs_pytorch")
    for a in r.get("accuracy") or []:
        task = a["adapter"] or "default"
        err = a["vs_pytorch"]["relative_error"]
        if limit is not None:
            _check(checks, f"error vs PyTorch ({task})", "PASS" if err <= limit else "FAIL",
                   f"{err:.4f}; bound {limit:.4f}")
        bound = rule.get("max_relative_error_vs_dequantized")
        if bound is not None:
            err_q = a["vs_dequantized"]["relative_error"]
            _check(checks, f"error vs dequantized graph ({task})",
                   "PASS" if err_q <= bound else "FAIL", f"{err_q:.4f}; bound {bound:.4f}")
        cosine = rule.get("min_cosine")
        if cosine is not None and a["vs_pytorch"]["cosine"] is not None:
            c = a["vs_pytorch"]["cosine"]
            _check(checks, f"cosine vs PyTorch ({task})", "PASS" if c >= cosine else "FAIL",
                   f"{c:.5f}; floor {cosine}")


def _energy(rule, mine, results, report, checks) -> None:
    if not rule:
        return
    meter = report["energy_meter"]
    base, ratio_max = rule["baseline"], float(rule["max_ratio"])
    if meter["status"] == "unavailable":
        _check(checks, "energy", "FAIL" if rule.get("required") else "SKIP",
               f"no meter: {meter['reason']}")
        return
    label = " (estimate)" if meter["status"] == "estimate" else ""
    for threads, r in sorted(mine.items()):
        other = results.get((base, threads))
        e = (r.get("energy") or {}).get("joules_per_inference")
        b = ((other or {}).get("energy") or {}).get("joules_per_inference")
        what = f"energy vs {base} at {threads} threads{label}"
        if e is None or b is None or b <= 0:
            _check(checks, what, "SKIP", "energy not measured for both")
            continue
        _check(checks, what, "PASS" if e / b <= ratio_max else "FAIL",
               f"{e * 1e3:.4g} mJ against {b * 1e3:.4g} mJ per inference ({e / b:.2f}x); "
               f"at most {ratio_max:.2f}x")


def _memory(rule, mine, results, checks) -> None:
    if not rule:
        return
    base, ratio_max = rule["baseline"], float(rule["max_ratio"])
    for threads, r in sorted(mine.items()):
        other = results.get((base, threads))
        if other is None:
            continue  # the throughput check already says why
        ratio = r["peak_rss_bytes"] / other["peak_rss_bytes"]
        _check(checks, f"peak RSS vs {base} at {threads} threads",
               "PASS" if ratio <= ratio_max else "FAIL",
               f"{r['peak_rss_bytes'] / 1e6:.1f} MB against {other['peak_rss_bytes'] / 1e6:.1f}"
               f" MB ({ratio:.2f}x); at most {ratio_max:.2f}x")


__all__ = ["SUITES_DIR", "evaluate", "load", "names"]
