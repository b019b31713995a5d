"""report.html is one self-contained page whose plots render in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from edgepet.device_tests import harness

pytest.importorskip("matplotlib", reason="report.html's plots need matplotlib (the bench extra)")


@pytest.fixture(scope="module")
def page(demo_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    options = harness.BenchOptions(bundle=str(demo_bundle.path), threads=[1, 2], runs=4,
                                   seconds=None, warmup=1, rounds=2, delay=0.0,
                                   energy="none", baselines=["ort-fp32", "ort-nbits4"],
                                   output=str(out))
    harness.bench(options)
    return out / "report.html"


def test_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched
    assert text.count('src="data:image/png;base64,') == 3  # latency, throughput, accuracy
    assert "Energy: unavailable" in text  # said, not plotted


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium here (Debian: apt-get install chromium; .ci/run does)")


def test_every_plot_renders_in_headless_chromium(page, tmp_path):
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/p"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=10000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r'<body data-plots="(\d+)" data-plots-rendered="(\d+)"', dom)
    assert body, "the page's load check did not run"
    assert body.group(1) == body.group(2) == "3"
    assert dom.count('data-rendered="yes"') == 3
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000  # tables and plots, not blank
