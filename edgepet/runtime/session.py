"""ONNX Runtime sessions that know ``ai.edgepet.LutMatMul``, and which op library they load.

An op library is code that runs in this process. The installed edgepet's library is used
whenever it fits this CPU; a library shipped inside a bundle only when none fits, only
with the user's consent (``--trust-bundle-library``, ``trust_library=True`` or
``EDGEPET_TRUST_BUNDLE_LIBRARY=1``), and only when its SHA-256 matches the manifest
(:meth:`edgepet.runtime.bundle.Bundle.op_library`). Reading a bundle loads no library.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

_LIBRARY_NAMES = ("libedgepet_ort.so", "libedgepet_ort.dylib", "edgepet_ort.dll")

#: Set to 1 to let apps load an op library shipped inside a bundle (see the module doc).
TRUST_BUNDLE_LIBRARY_ENV = "EDGEPET_TRUST_BUNDLE_LIBRARY"

#: ELF e_machine values of the architectures target profiles name.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


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


def library_arch(path: str | os.PathLike[str]) -> str | None:
    """CPU architecture of a shared library (ELF), or None when it cannot tell.

    Reads the file's header only; nothing is loaded.
    """
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "little" if header[5] == 1 else "big"
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], order))


def installed_op_library() -> str | None:
    """The installed edgepet's op library when it fits this CPU, else None.

    Fits: found (``op_library_path()``) and built for this machine's architecture (its
    kernels pick the ISA at run time). Nothing is loaded to decide.
    """
    from edgepet.runtime.errors import BadInputError
    from edgepet.targets import host_arch

    try:
        path = op_library_path()
    except FileNotFoundError as error:
        if os.environ.get("EDGEPET_ORT_LIBRARY"):  # the user's own choice: say so
            raise BadInputError(f"{error} — set it to edgepet's op library, or unset it"
                                ) from None
        return None
    arch = library_arch(path)
    return path if arch in (None, host_arch()) else None


def installed_operator() -> tuple[int, str] | None:
    """(op ABI version, packed layout) of the installed edgepet, known without loading
    its op library (the native module is built from the same sources); None without it."""
    try:
        from edgepet import _native
    except ImportError:
        return None
    return int(_native.OP_ABI_VERSION), str(_native.LAYOUT)


def library_operator(path: str | os.PathLike[str]) -> tuple[int, str | None]:
    """(op ABI version, packed layout or None) asked of an op library.

    This loads the library: call it only for a library that is about to be loaded into
    a session anyway. Libraries that do not report their layout (``edgepet_op_layout``)
    give None; for them the ABI version stands for the layout too.
    """
    library = ctypes.CDLL(os.fspath(path))
    abi = int(library.edgepet_op_abi_version())
    report = getattr(library, "edgepet_op_layout", None)
    if report is None:
        return abi, None
    report.restype = ctypes.c_char_p
    value = report()
    return abi, (value.decode() if value else None)


def trust_bundle_library_from_env() -> bool:
    """True when ``EDGEPET_TRUST_BUNDLE_LIBRARY`` is 1 (or true/yes/on)."""
    return os.environ.get(TRUST_BUNDLE_LIBRARY_ENV, "").strip().lower() in (
        "1", "true", "yes", "on")


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
