"""Shared fixtures: example bundles are exported once per session and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")


class BundleCache:
    """Exports each (example, bits) once; tests that only read a bundle share it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundles: dict[tuple, object] = {}

    def example(self, name: str, bits="4", **options):
        from edgepet.exporters.pipeline import export

        key = (name, str(bits), tuple(sorted(options.items())))
        if key not in self.bundles:
            out = self.root / f"{name}-{bits}-{len(self.bundles)}"
            self.bundles[key] = export(f"example:{name}", out, target="x86-avx2",
                                       bits=bits, **options)
        return self.bundles[key]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> BundleCache:
    return BundleCache(tmp_path_factory.mktemp("bundles"))
