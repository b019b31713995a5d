"""Writing bundles: the staging folder an export fills, and the manifest's file table.

Reading, checking and running bundles is :mod:`edgepet.runtime.bundle` (devices need no
exporter); the constants naming a bundle's files live there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepet.runtime.bundle import MANIFEST, sha256_file
from edgepet.runtime.errors import BadInputError


@contextlib.contextmanager
def staged_output(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``out`` only if the block succeeds.

    On any error the staging folder is removed and ``out`` is left as it was, so a
    failed export never leaves a partial bundle.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output {out} exists and is a file — choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if not (out / MANIFEST).is_file():
            raise BadInputError(f"output folder {out} is not empty and is not a bundle — "
                                "choose another folder")
        raise BadInputError(f"output folder {out} already holds a bundle — pass --force to "
                            "replace it, or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        stage.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """Bytes and SHA-256 of every file under ``folder`` except the manifest."""
    table = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        table[rel] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    return table


__all__ = ["file_table", "staged_output"]
