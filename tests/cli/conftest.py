"""The CLI tests need the native build (the ``cli`` fixture is in tests/conftest.py)."""

import pytest

pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")
