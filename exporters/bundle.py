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

from edgepet.runtime.bundle import MANIFEST, read_manifest, sha256_file
from edgepet.runtime.errors import BadInputError


@contextlib.contextmanager
def staged_output(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``out`` only if the block succeeds.

    On any error the staging folder is removed and ``out`` is left as it was, so a
    failed export never leaves a partial bundle. ``overwrite`` replaces an existing
    *bundle* only: a folder holding anything its manifest does not list (a file a user
    added, or no manifest at all) is refused, never emptied.
    """
    out = Path(out)
    _check_replaceable(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        raise _unwritable(out, error) from None
    try:
        yield stage
        old = None
        try:
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                out.rename(old)
            stage.rename(out)
        except OSError as error:
            if old is not None and not out.exists():
                old.rename(out)
            raise _unwritable(out, error) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _unwritable(out: Path, error: OSError) -> BadInputError:
    return BadInputError(f"cannot write the output folder {out}: {error.strerror or error} — "
                         "choose a folder you may write to (-o)")


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """``out`` is absent, an empty folder, or (with ``overwrite``) a bundle and only that."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BadInputError(f"output {out} exists and is not a folder (a file or a symlink) — "
                            "choose a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise BadInputError(f"output folder {out} is not empty and is not a bundle — choose "
                            "another folder (--force replaces a bundle only)")
    if not overwrite:
        raise BadInputError(f"output folder {out} already holds a bundle — pass --force to "
                            "replace it, or choose another folder")
    try:
        listed = set(read_manifest(out)["files"]) | {MANIFEST}
    except BadInputError as error:
        raise BadInputError(f"output folder {out} holds a manifest edgepet cannot read, so "
                            f"it cannot tell which files are the bundle's ({error}) — not "
                            "replacing it; remove the folder yourself or choose another"
                            ) from None
    foreign = sorted(rel for rel in (p.relative_to(out).as_posix() for p in out.rglob("*")
                                     if p.is_symlink() or not p.is_dir())
                     if rel not in listed)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                          if len(foreign) > 5 else "")
        raise BadInputError(f"output folder {out} holds files that are not part of its bundle "
                            f"({shown}) — --force replaces a bundle only; move them out of "
                            "the folder, or choose another folder")


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
