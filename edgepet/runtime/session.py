"""ONNX Runtime sessions that know ``ai.edgepet.LutMatMul``."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

_LIBRARY_NAMES = ("libedgepet_ort.so", "libedgepet_ort.dylib", "edgepet_ort.dll")


def _library_folders() -> list[Path]:
    # The library is installed beside the native module (in an editable install
    # that is the build's site-packages folder, not the source tree).
    spec = importlib.util.find_spec("edgepet._native")
    folders = [Path(__file__).resolve().parent.parent / "lib"]
    if spec is not None and spec.origin:
        folders.insert(0, Path(spec.origin).parent / "lib")
    return folders


def op_library_path(arch: str | None = None) -> str:
    """Path of the op library (``libedgepet_ort``) that registers ``ai.edgepet`` ops.

    Args:
        arch: None for this machine's library; ``"aarch64"`` for the one cross-built
            for 64-bit Arm Linux (present when the build found aarch64-linux-gnu-g++),
            which exporters put into bundles for Arm targets.

    Apps without Python load the same file with ONNX Runtime's
    ``RegisterCustomOpsLibrary``. ``EDGEPET_ORT_LIBRARY`` overrides the host lookup.
    """
    override = os.environ.get("EDGEPET_ORT_LIBRARY")
    if override and arch is None:
        if not Path(override).is_file():
            raise FileNotFoundError(f"EDGEPET_ORT_LIBRARY={override} is not a file")
        return override
    folders = _library_folders()
    foreign = arch is not None and arch != platform.machine()
    if foreign:
        folders = [folder / arch for folder in folders]
    for folder in folders:
        for name in _LIBRARY_NAMES:
            if (folder / name).is_file():
                return str(folder / name)
    if arch == "aarch64":
        raise FileNotFoundError(
            "edgepet's op library for aarch64 was not built — install the cross compiler "
            "(Debian: apt-get install g++-aarch64-linux-gnu) and reinstall edgepet"
        )
    if foreign:
        raise FileNotFoundError(
            f"edgepet builds op libraries for this machine ({platform.machine()}) and "
            f"aarch64, not for {arch}"
        )
    raise FileNotFoundError(
        f"edgepet's ONNX Runtime op library was not found in {folders[0]} — reinstall "
        "edgepet (pip install .) so that the native build runs"
    )


def session_options(
    threads: int | None = None,
    library: str | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.SessionOptions:
    """SessionOptions with the op library registered and ``threads`` intra-op threads.

    Args:
        threads: intra-op threads (None: ONNX Runtime's default, all cores).
        library: the op library to load (None: :func:`op_library_path`).
        options: SessionOptions to add to (None: fresh ones).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be at least 1")
    options = ort.SessionOptions() if options is None else options
    options.register_custom_ops_library(library or op_library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` with edgepet's operators available.

    Args:
        model: a path, serialized bytes or an ``onnx.ModelProto``.
        threads: intra-op threads (None: ONNX Runtime's default, all cores).
        options: extra SessionOptions to start from (the op library is added).
        **kwargs: passed to ``onnxruntime.InferenceSession`` (e.g. providers).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | onnx.ModelProto,
        threads: int | None = None,
        options: ort.SessionOptions | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, os.PathLike):
            model = os.fspath(model)
        options = session_options(threads, options=options)
        kwargs.setdefault("providers", ["CPUExecutionProvider"])
        super().__init__(model, sess_options=options, **kwargs)
