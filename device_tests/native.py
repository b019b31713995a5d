"""``edgepet-run``, the native bundle runner (native/runner/): where it is installed and
how to read what it prints."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

from edgepet.runtime import BadInputError


def runner_path() -> Path:
    """The edgepet-run built with this package (installed beside the op library)."""
    spec = importlib.util.find_spec("edgepet._native")
    folders = [Path(__file__).resolve().parent.parent / "bin"]
    if spec is not None and spec.origin:
        folders.insert(0, Path(spec.origin).parent / "bin")
    for folder in folders:
        if (folder / "edgepet-run").is_file():
            return folder / "edgepet-run"
    raise FileNotFoundError("edgepet-run was not built — reinstall edgepet with "
                            "EDGEPET_BUILD_RUNNER on (the default)")


def run(bundle: str | Path, *args: str, runner: str | Path | None = None,
        prefix: tuple[str, ...] = (), timeout: float = 600) -> dict[str, Any]:
    """Run edgepet-run on ``bundle`` and return its JSON (``prefix``: e.g. qemu)."""
    command = [*prefix, str(runner or runner_path()), str(bundle), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode == 2 or not done.stdout.strip():
        raise BadInputError(done.stderr.strip() or f"edgepet-run exited {done.returncode}")
    return json.loads(done.stdout)


__all__ = ["run", "runner_path"]
