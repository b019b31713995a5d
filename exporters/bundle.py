"""Writing bundles: the staging folder an export fills, the manifest's file table, and
the native files (op library, ``edgepet-run``) a bundle for another platform carries.

Reading, checking and running bundles is :mod:`edgepet.runtime.bundle` (devices need no
exporter); the constants naming a bundle's files live there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepet.runtime.bundle import MANIFEST, read_manifest, sha256_file
from edgepet.runtime.errors import BadInputError

if TYPE_CHECKING:
    from edgepet.targets import TargetProfile

#: The folder ``edgepet bench`` writes its reports into by default. An export with
#: ``overwrite`` carries it over into the new bundle (a report is the user's file).
REPORTS_DIR = "reports"


@contextlib.contextmanager
def staged_output(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``out`` only if the block succeeds.

    On any error the staging folder is removed and ``out`` is left as it was, so a
    failed export never leaves a partial bundle. ``overwrite`` replaces an existing
    *bundle* only: a folder holding anything its manifest does not list (a file a user
    added, or no manifest at all) is refused, never emptied — except the bench reports
    in ``reports/``, which move into the new bundle.
    """
    out = Path(out)
    kept = _check_replaceable(out, overwrite)
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
            _carry_over(old, out, kept)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _unwritable(out: Path, error: OSError) -> BadInputError:
    return BadInputError(f"cannot write the output folder {out}: {error.strerror or error} — "
                         "choose a folder you may write to (-o)")


def _carry_over(old: Path, new: Path, kept: list[str]) -> None:
    """Move the top-level entries ``kept`` (``reports/``) from the replaced bundle into the
    new one; if one cannot move, leave the old folder in place and say where it is."""
    for name in kept:
        try:
            (old / name).rename(new / name)
        except OSError as error:
            raise BadInputError(
                f"the new bundle is in {new}, but {name}/ could not be moved into it from the "
                f"bundle it replaced ({error.strerror or error}) — it is still in {old}; move "
                "it yourself") from None


def _check_replaceable(out: Path, overwrite: bool) -> list[str]:
    """``out`` is absent, an empty folder, or (with ``overwrite``) a bundle and only that,
    plus bench reports; return the top-level entries to carry over (``["reports"]``)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BadInputError(f"output {out} exists and is not a folder (a file or a symlink) — "
                            "choose a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return []
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
    reports = out / REPORTS_DIR
    kept = [REPORTS_DIR] if reports.is_dir() and not reports.is_symlink() and \
        REPORTS_DIR not in listed else []
    foreign = sorted(rel for rel in (p.relative_to(out).as_posix() for p in out.rglob("*")
                                     if p.is_symlink() or not p.is_dir())
                     if rel not in listed and not (kept and rel.startswith(f"{REPORTS_DIR}/")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                          if len(foreign) > 5 else "")
        raise BadInputError(f"output folder {out} holds files that are not part of its bundle "
                            f"({shown}) — --force replaces a bundle only; move them out of "
                            "the folder, or choose another folder")
    return kept


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """Bytes and SHA-256 of every file under ``folder`` except the manifest."""
    table = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        table[rel] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    return table


# --- native files for other platforms -------------------------------------------------------

#: How to get each platform's native files when this install has none, in words.
_BUILD_HINTS = {
    "linux-aarch64": "install the cross compiler (Debian: apt-get install "
                     "g++-aarch64-linux-gnu) and reinstall edgepet, which then builds both "
                     "(docs/export.md, 'Native files for other platforms')",
    "macos-arm64": "pip install ziglang, then reinstall edgepet with EDGEPET_CROSS_APPLE=ON, "
                   "which cross-builds both with zig (docs/export.md, 'Native files for "
                   "other platforms'); or pip install edgepet on the Mac itself",
    "android-arm64": "the Android NDK is not reachable where edgepet is built: build "
                     "libedgepet_ort.so and edgepet-run with the NDK's "
                     "android.toolchain.cmake for arm64-v8a, API level 24 (docs/export.md, "
                     "'Native files for other platforms'), and register the library in the "
                     "app with SessionOptions.registerCustomOpLibrary",
}
#: The name of each platform's op library file.
_LIBRARY_FILE = {"linux": "libedgepet_ort.so", "macos": "libedgepet_ort.dylib",
                 "android": "libedgepet_ort.so"}
RUNNER = "edgepet-run"


@dataclass
class NativeFiles:
    """What a bundle for ``platform`` ships besides the model: the op library and
    ``edgepet-run`` built for it, and for each one not found, what is missing and how to
    build it (``{"what", "why", "how"}``, the manifest's ``operator.missing``)."""

    platform: str
    library: Path | None = None
    runner: Path | None = None
    missing: list[dict[str, str]] = field(default_factory=list)


def native_platform(profile: TargetProfile) -> str:
    """``OS-ARCH`` of a target as the install's folders and the manifest name it
    (linux-aarch64, macos-arm64, android-arm64, linux-x86_64)."""
    arch = "arm64" if profile.os in ("macos", "android") and profile.arch == "aarch64" \
        else profile.arch
    return f"{profile.os}-{arch}"


def install_folders() -> list[Path]:
    """Where this install keeps its native files (``lib/``, ``bin/`` beneath each)."""
    import edgepet

    spec = importlib.util.find_spec("edgepet._native")
    folders = [Path(edgepet.__file__).resolve().parent]
    if spec is not None and spec.origin:
        folders.insert(0, Path(spec.origin).parent)
    return folders


def _installed(kind: str, subfolder: str, name: str) -> Path | None:
    for root in install_folders():
        candidate = root / kind / subfolder / name
        if candidate.is_file():
            return candidate
    return None


def native_files(profile: TargetProfile, library: Path | None = None) -> NativeFiles:
    """The op library and ``edgepet-run`` this install built for ``profile``'s platform
    (``lib/PLATFORM/``, ``bin/PLATFORM/``; aarch64 Linux keeps its historical
    ``lib/aarch64/``), or what is missing. Nothing for the host platform, whose install
    has its own. ``library``: one the user gave (``--op-library``), used instead."""
    from edgepet.runtime.session import library_arch

    platform = native_platform(profile)
    files = NativeFiles(platform)
    if profile.is_host_platform():
        files.library = library
        return files
    folder = profile.arch if profile.os == "linux" else platform
    files.library = library or _installed("lib", folder, _LIBRARY_FILE.get(profile.os, ""))
    if files.library is not None and profile.os == "linux" and library is None \
            and library_arch(files.library) != profile.arch:
        files.library = None
    files.runner = _installed("bin", folder, RUNNER)
    how = _BUILD_HINTS.get(platform, f"install edgepet on a {platform} machine (pip install "
                                     "edgepet) and export there")
    for what, found in (("op library", files.library), (RUNNER, files.runner)):
        if found is None:
            files.missing.append({
                "what": what,
                "why": f"this edgepet has no {what} built for {platform}",
                "how": how})
    return files


def ship_native(stage: Path, files: NativeFiles) -> dict[str, str | None]:
    """Copy the native files into the staged bundle (``lib/``, ``bin/``); their paths."""
    shipped: dict[str, str | None] = {"library": None, "runner": None}
    for key, source, folder in (("library", files.library, "lib"),
                                ("runner", files.runner, "bin")):
        if source is None:
            continue
        (stage / folder).mkdir(exist_ok=True)
        shutil.copy2(source, stage / folder / source.name)
        shipped[key] = f"{folder}/{source.name}"
    return shipped


__all__ = ["REPORTS_DIR", "NativeFiles", "file_table", "install_folders", "native_files",
           "native_platform", "ship_native", "staged_output"]
