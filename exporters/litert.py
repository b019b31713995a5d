"""``edgepet export --with-tflite``: the float model as ``.tflite``, for bench's litert baseline.

Conversion needs torch and the PyTorch model (litert-torch lowers a ``torch.export``
program), so it happens on the host at export time, never on a device. The file goes to
``baselines/model.tflite`` in the bundle, hashed in the manifest's file table like every
other file, and ``edgepet bench`` runs it with LiteRT's interpreter.

litert-torch converts with static shapes: the model is converted at batch 1 (its
default), and the harness runs a reference batch item by item.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepet.runtime.errors import BadInputError

#: Where the converted model lives in a bundle.
FILE = "baselines/model.tflite"
INSTALL_HINT = ("pip install litert-torch (it pulls jax and the LiteRT converter, about a "
                "gigabyte; Linux x86-64 or macOS arm64 hosts)")


def converter_version() -> str:
    """litert-torch's version; BadInputError saying how to install it when it is absent."""
    try:
        import litert_torch  # noqa: F401 — imported to prove it loads, not only that it is listed
    except Exception as error:  # noqa: BLE001 — a broken jax install raises what it likes
        why = ("is not installed" if isinstance(error, ModuleNotFoundError)
               else f"cannot be imported ({type(error).__name__}: {error})")
        raise BadInputError(f"--with-tflite converts the model with litert-torch, which {why} "
                            f"here — {INSTALL_HINT}, or export without --with-tflite"
                            ) from None
    try:
        return importlib.metadata.version("litert-torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def convert(module: Any, example: Sequence[Any], path: Path) -> dict[str, Any]:
    """Convert ``module`` (float, adapters merged) at ``example``'s shapes, batch 1, to
    ``path``; return what the manifest records about it."""
    import litert_torch

    args = tuple(t[:1] if getattr(t, "ndim", 0) else t for t in example)
    try:
        litert_torch.convert(module.eval(), args).export(str(path))
    except Exception as error:  # noqa: BLE001 — the converter raises many types
        text = " ".join(str(error).split())[:300] or type(error).__name__
        raise BadInputError(
            f"--with-tflite: litert-torch could not convert this model ({type(error).__name__}:"
            f" {text}) — nothing was written; export without --with-tflite, and give bench a "
            ".tflite converted another way with --tflite FILE") from None
    return {"file": FILE, "batch": 1,
            "inputs": [{"shape": list(t[:1].shape) if getattr(t, "ndim", 0) else [],
                        "dtype": str(t.dtype).removeprefix("torch.")} for t in example]}


__all__ = ["FILE", "convert", "converter_version"]
