"""report.html: one self-contained page, plots embedded as PNG data URIs (no network).

Plots (matplotlib, Agg): latency distribution per contender and thread count,
throughput against threads, energy per inference where a meter measured it, and
accuracy against speed. A plot that has nothing to show is replaced by a sentence
saying why, never by an empty axis.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from edgepet.device_tests.report import markdown

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0} figure img{max-width:100%;border:1px solid #eee}
.missing{color:#a33} pre{white-space:pre-wrap}
"""

#: Marks each plot image on load, so a headless browser can tell that every plot decoded.
_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure.plot img');
  var ok = 0;
  imgs.forEach(function (img) {
    var good = img.complete && img.naturalWidth > 0;
    img.setAttribute('data-rendered', good ? 'yes' : 'no');
    if (good) ok++;
  });
  document.body.setAttribute('data-plots', imgs.length);
  document.body.setAttribute('data-plots-rendered', ok);
});
</script>
"""


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """``(id, title, base64 PNG or None)``; None carries the reason in the title."""
    try:
        import matplotlib
    except ModuleNotFoundError:  # a device without the bench extra: tables only
        return [("plots", "No plots: matplotlib is not installed here — pip install "
                 "'edgepet[bench]', or render this report.json elsewhere", None)]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["results"] if r.get("n_runs")]
    out: list[tuple[str, str, str | None]] = []
    if not measured:
        return [("latency", "nothing was measured", None)]

    fig, ax = plt.subplots(figsize=(0.8 * len(measured) + 3, 4.5))
    labels = [f"{r['contender']} ×{r['n_threads']}" for r in measured]
    ax.boxplot([[x / 1e6 for x in r["samples_ns"]] for r in measured],
               showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
    ax.set_ylabel("latency per inference (ms)")
    # Rare stalls (another process, a page fault) would squash the boxes: clip at the p99s.
    ax.set_ylim(0, 1.15 * max(r["p99_ns"] for r in measured) / 1e6)
    ax.set_title("Latency distribution (box: quartiles, whiskers: 1.5 IQR; above p99 clipped)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    out.append(("latency", "Latency distributions", _figure_png(fig)))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r["contender"] for r in measured):
        rows = sorted((r for r in measured if r["contender"] == name),
                      key=lambda r: r["n_threads"])
        ax.errorbar([r["n_threads"] for r in rows], [r["avg_ts"] for r in rows],
                    yerr=[r["stddev_ts"] for r in rows], marker="o", capsize=3, label=name)
    ax.set_xlabel("threads")
    ax.set_ylabel("inferences / s")
    ax.set_xticks(sorted({r["n_threads"] for r in measured}))
    ax.set_title("Throughput against threads")
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(("throughput", "Throughput against threads", _figure_png(fig)))

    with_energy = [r for r in measured if (r.get("energy") or {}).get("joules_per_inference")
                   is not None]
    if with_energy:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(with_energy) + 1.5))
        ax.barh([f"{r['contender']} ×{r['n_threads']}" for r in with_energy],
                [r["energy"]["joules_per_inference"] * 1e3 for r in with_energy])
        estimate = report["energy_meter"].get("status") == "estimate"
        ax.set_xlabel("mJ per inference, idle subtracted" + (" (estimate)" if estimate else ""))
        ax.set_title(f"Energy per inference ({report['energy_meter']['name']})")
        out.append(("energy", "Energy per inference", _figure_png(fig)))
    else:
        meter = report["energy_meter"]
        out.append(("energy", "Energy: unavailable — " + (meter.get("reason") or
                                                         "no run measured it"), None))

    with_error = [r for r in measured if r.get("accuracy")]
    if with_error:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in with_error:
            err = r["accuracy"][0]["vs_pytorch"]["relative_error"]
            ax.scatter(r["median_ns"] / 1e6, err, s=40)
            ax.annotate(f"{r['contender']} ×{r['n_threads']}", (r["median_ns"] / 1e6, err),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("median latency (ms) — left is faster")
        ax.set_ylabel("relative error vs fp32 PyTorch — lower is better")
        ax.set_title("Accuracy against speed")
        ax.grid(alpha=0.3)
        out.append(("accuracy", "Accuracy against speed", _figure_png(fig)))
    return out


def _markdown_tables_to_html(text: str) -> str:
    """The report's Markdown (headings, lists, tables) as HTML — enough for report.md."""
    out: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if not table:
            return
        rows = [r.strip().strip("|").split("|") for r in table if not set(r) <= set("|-: ")]
        out.append("<table>")
        for i, cells in enumerate(rows):
            tag = "th" if i == 0 else "td"
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c.strip())}</{tag}>"
                                        for c in cells) + "</tr>")
        out.append("</table>")
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def render(report: dict[str, Any]) -> str:
    """The whole page."""
    figures = []
    for plot_id, title, png in plots(report):
        if png is None:
            figures.append(f'<p class="missing" data-plot="{plot_id}">{html.escape(title)}</p>')
        else:
            figures.append(f'<figure class="plot" data-plot="{plot_id}"><img alt="{title}" '
                           f'src="data:image/png;base64,{png}"><figcaption>{title}'
                           "</figcaption></figure>")
    body = _markdown_tables_to_html(markdown(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgepet bench</title>"
            f"<style>{_STYLE}</style></head><body>{body}<h2>Plots</h2>{''.join(figures)}"
            f"{_CHECK}</body></html>")


__all__ = ["plots", "render"]


def render_compare(markdown_text: str) -> str:
    """compare.html: the side-by-side table as a page."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgepet bench compare"
            f"</title><style>{_STYLE}</style></head><body>"
            f"{_markdown_tables_to_html(markdown_text)}</body></html>")
