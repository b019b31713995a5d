"""The top-level Python API: ``edgepet.export(...)`` and ``edgepet.load(OUT)``.

``load`` (and running bundles) needs numpy, onnx and onnxruntime only; ``export``
imports torch when called, never before.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["export", "load"]


def export(model: Any = None, out: str | os.PathLike[str] = "edgepet-bundle", **options: Any):
    """Export a (tuned) PyTorch model into a bundle folder and return it, verified.

    See :func:`edgepet.exporters.pipeline.export` for every option (target, bits,
    group_size, keep, adapters, input_shapes, ...). Returns a
    :class:`~edgepet.runtime.bundle.Bundle`; ``bundle.session()`` runs it.
    """
    from edgepet.exporters.pipeline import export as _export

    return _export(model, out, **options)


def load(path: str | os.PathLike[str], threads: int | None = None,
         trust_library: bool | None = None):
    """Open a bundle folder, check it (files, hashes, schema, op ABI) and return a session.

    The session has ``run(inputs)``, ``adapters``, ``set_adapter(name)`` and ``bundle``
    (the manifest and reference data). ``trust_library``: allow the op library the bundle
    ships when the installed edgepet has none for this CPU (None: the environment variable
    ``EDGEPET_TRUST_BUNDLE_LIBRARY``).
    """
    from edgepet.runtime.bundle import load as _load

    return _load(path, threads, trust_library)
