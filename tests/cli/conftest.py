"""Helpers for driving the ``edgepet`` command in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit code, stdout, stderr)``."""
    from edgepet.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def no_partial_output():
    """``no_partial_output(out)``: neither the bundle nor a staging folder was left behind."""

    def check(out: Path) -> bool:
        leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        return not out.exists() and not leftovers

    return check
