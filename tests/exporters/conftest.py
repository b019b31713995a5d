"""The exporter tests need torch and the native build."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")
