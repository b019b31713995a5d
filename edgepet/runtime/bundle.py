"""Bundles on disk: reading, checking, running and verifying them (no torch needed).

The writer side (staging folders, the file table) is ``edgepet.exporters.bundle``.

A bundle is a folder::

    manifest.json            what is here and how it was made (schema: manifest.schema.json)
    manifest.schema.json     the JSON Schema of manifest.json, for other tools
    model.onnx               the graph, LutMatMul nodes with packed weights
    model.onnx.data          its weights, when the model is large (ONNX external data)
    adapters/TASK.onnx_adapter   per-task parameters (ONNX Runtime adapter format)
    reference/               inputs, fp32 PyTorch outputs and dequantized-graph outputs

:meth:`Bundle.open` checks it before anything runs: a missing file, a size or hash that
differs from the manifest, an unknown schema version or an op library of another ABI
is a :class:`BundleError` that says which and what to do.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.runtime import manifest as manifest_schema
from edgepet.runtime.errors import BadInputError

MANIFEST = "manifest.json"
SCHEMA_COPY = "manifest.schema.json"
MODEL = "model.onnx"
EXTERNAL_DATA = "model.onnx.data"
ADAPTER_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"
REFERENCE_DIR = "reference"


class BundleError(BadInputError):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: ELF e_machine values of the architectures target profiles name.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def library_arch(path: str | os.PathLike[str]) -> str | None:
    """CPU architecture of a shared library (ELF), or None when it cannot tell."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "little" if header[5] == 1 else "big"
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], order))


@cache
def op_abi_version(path: str | None = None) -> int:
    """ABI version of an op library (default: the installed one), asked of the library."""
    from edgepet.runtime import op_library_path

    library = ctypes.CDLL(path or op_library_path())
    return int(library.edgepet_op_abi_version())


def relative_error(y: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """``||y - ref|| / ||ref||`` over all outputs together (0 when both are zero)."""
    pairs = zip(y, ref, strict=True)
    num = sum(float(np.sum((np.asarray(a, np.float64) - b) ** 2)) for a, b in pairs)
    den = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in ref)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@dataclass
class VerifyResult:
    """Error of the bundle against its reference outputs, for one task (adapter)."""

    adapter: str | None
    vs_pytorch: float
    vs_quantized: float
    max_abs_vs_pytorch: float
    top1_agreement: float | None
    tolerance_pytorch: float
    tolerance_quantized: float

    @property
    def ok(self) -> bool:
        """Within both tolerances."""
        return (self.vs_pytorch <= self.tolerance_pytorch
                and self.vs_quantized <= self.tolerance_quantized)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "adapter": self.adapter, "ok": self.ok,
            "relative_error_vs_pytorch": self.vs_pytorch,
            "relative_error_vs_quantized": self.vs_quantized,
            "max_abs_error_vs_pytorch": self.max_abs_vs_pytorch,
            "top1_agreement": self.top1_agreement,
            "tolerance_vs_pytorch": self.tolerance_pytorch,
            "tolerance_vs_quantized": self.tolerance_quantized,
        }


@dataclass
class Bundle:
    """A checked bundle folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str], check_files: bool = True) -> Bundle:
        """Read and check a bundle: manifest schema, files, sizes, hashes and op ABI."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path} is not a bundle folder — give the folder that "
                              "`edgepet export -o` wrote")
        manifest = read_manifest(path)
        bundle = cls(path, manifest)
        if check_files:
            bundle.check_files()
        bundle.check_abi()
        return bundle

    # --- what the manifest says -------------------------------------------------------

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def adapters(self) -> list[str]:
        """Task names with an adapter file, the first one being the graph's default."""
        return [a["name"] for a in self.manifest["adapters"]]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    def adapter_path(self, name: str) -> Path:
        """Path of task ``name``'s adapter file."""
        for entry in self.manifest["adapters"]:
            if entry["name"] == name:
                return self.path / entry["file"]
        raise BadInputError(
            f"bundle {self.path} has no adapter {name!r} — its adapters: "
            f"{', '.join(self.adapters) or 'none'}"
        )

    # --- checks -------------------------------------------------------------------------

    def check_files(self) -> None:
        """Every file the manifest lists is present with its size and SHA-256."""
        for rel, info in self.manifest["files"].items():
            file = self.path / rel
            if not file.is_file():
                raise BundleError(f"bundle {self.path} is missing {rel} — copy the whole "
                                  "folder again, or export again")
            size = file.stat().st_size
            if size != info["bytes"]:
                raise BundleError(
                    f"bundle file {rel} has {size} bytes, the manifest says {info['bytes']} "
                    "— the file is truncated or was changed; copy the bundle again"
                )
            if sha256_file(file) != info["sha256"]:
                raise BundleError(
                    f"bundle file {rel} does not match the SHA-256 in manifest.json — it "
                    "was changed or damaged after export; copy the bundle again"
                )

    def op_library(self) -> str:
        """The op library to run with: the bundle's own when it ships one for this CPU."""
        from edgepet.runtime import op_library_path
        from edgepet.targets import host_arch

        shipped = self.manifest["operator"].get("library")
        if shipped and library_arch(self.path / shipped) == host_arch():
            return str(self.path / shipped)
        return op_library_path()

    def check_abi(self) -> None:
        """The op library here reads this bundle's operator ABI and layout."""
        op = self.manifest["operator"]
        try:
            have = op_abi_version(self.op_library())
        except (FileNotFoundError, OSError, AttributeError) as error:
            raise BundleError(f"edgepet's op library cannot be loaded: {error}") from None
        if op["abi_version"] != have:
            raise BundleError(
                f"bundle {self.path} was made for LutMatMul ABI {op['abi_version']}, the "
                f"installed op library speaks ABI {have} — export the model again with "
                "this edgepet, or install the edgepet version that made it "
                f"({self.manifest['edgepet_version']})"
            )

    # --- running ------------------------------------------------------------------------

    def session(self, threads: int | None = None) -> BundleSession:
        """An ONNX Runtime session for the bundle, adapters ready to switch."""
        return BundleSession(self, threads)

    def reference_inputs(self) -> dict[str, np.ndarray]:
        return _load_npz(self.path / self.manifest["reference"]["inputs"])

    def reference_outputs(self, adapter: str | None = None) -> tuple[dict, dict]:
        """(fp32 PyTorch outputs, dequantized-graph outputs) for a task."""
        ref = self.manifest["reference"]
        entry = next((a for a in self.manifest["adapters"] if a["name"] == adapter), None)
        torch_file = (entry or {}).get("reference_outputs") or ref["outputs"]
        quant_file = (entry or {}).get("quantized_outputs") or ref["quantized_outputs"]
        return _load_npz(self.path / torch_file), _load_npz(self.path / quant_file)

    def verify(self, threads: int | None = None) -> list[VerifyResult]:
        """Run ``reference/`` through the bundle (each adapter in turn) and measure errors."""
        session = self.session(threads)
        inputs = self.reference_inputs()
        tol = self.manifest["reference"]["tolerance"]
        results = []
        for adapter in self.adapters or [None]:
            session.set_adapter(adapter)
            got = session.run(inputs)
            fp32, quant = self.reference_outputs(adapter)
            names = [o["name"] for o in self.manifest["outputs"]]
            y = [got[n] for n in names]
            results.append(VerifyResult(
                adapter=adapter,
                vs_pytorch=relative_error(y, [fp32[n] for n in names]),
                vs_quantized=relative_error(y, [quant[n] for n in names]),
                max_abs_vs_pytorch=max(float(np.max(np.abs(a - fp32[n]))) if a.size else 0.0
                                       for a, n in zip(y, names, strict=False)),
                top1_agreement=_top1(y[0], fp32[names[0]]),
                tolerance_pytorch=float(tol["vs_pytorch"]),
                tolerance_quantized=float(tol["vs_quantized"]),
            ))
        return results


def _top1(y: np.ndarray, ref: np.ndarray) -> float | None:
    if y.ndim < 2 or y.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(y, -1) == np.argmax(ref, -1)))


def read_manifest(path: Path) -> dict[str, Any]:
    """manifest.json of bundle folder ``path``, checked against the schema."""
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} has no {MANIFEST} — it is not an edgepet bundle (or an "
                          "export did not finish); export again")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{file} is not valid JSON ({error}) — the file is damaged; "
                          "export again") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != manifest_schema.SCHEMA_ID:
        raise BundleError(f"{file} is not an edgepet bundle manifest")
    version = manifest.get("schema_version")
    if version != manifest_schema.SCHEMA_VERSION:
        raise BundleError(
            f"{file} has schema version {version!r}; this edgepet reads version "
            f"{manifest_schema.SCHEMA_VERSION} — use the edgepet version that wrote it "
            f"({manifest.get('edgepet_version', 'unknown')}) or export again"
        )
    problems = manifest_schema.check(manifest)
    if problems:
        raise BundleError(f"{file} does not follow the bundle schema: " + "; ".join(problems[:5]))
    return manifest


#: ``BundleSession.run``'s default: keep the active adapter.
_ACTIVE = object()


class BundleSession:
    """Runs a bundle: ``run(inputs)``, ``adapters``, ``set_adapter(name)``.

    Switching adapters changes which task's parameters the next runs use, without
    reloading the model (ONNX Runtime ``RunOptions.add_active_adapter``).
    """

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import onnxruntime as ort

        from edgepet.runtime import session_options

        self.bundle = bundle
        try:
            options = session_options(threads, library=bundle.op_library())
        except ValueError as error:  # a bad thread count: the user's input
            raise BadInputError(str(error)) from None
        # Adapter parameters are initializers listed as inputs; ORT warns about each.
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(bundle.model_path), options,
                                             providers=["CPUExecutionProvider"])
        self._ort = ort
        self._loaded: dict[str, Any] = {}
        self._active: str | None = None
        self._run_options = ort.RunOptions()
        self._inputs = {i.name: i for i in self._session.get_inputs()}

    @property
    def adapters(self) -> list[str]:
        """Task names that ``set_adapter`` accepts."""
        return self.bundle.adapters

    @property
    def active_adapter(self) -> str | None:
        """The task whose parameters runs use (None: the graph's built-in defaults)."""
        return self._active

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    def set_adapter(self, name: str | None) -> None:
        """Use task ``name`` from the next run on (None: the graph's defaults)."""
        options = self._ort.RunOptions()
        if name is not None:
            if name not in self._loaded:
                adapter = self._ort.LoraAdapter()
                adapter.Load(str(self.bundle.adapter_path(name)))
                self._loaded[name] = adapter
            options.add_active_adapter(self._loaded[name])
        self._run_options = options
        self._active = name

    def run(
        self,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
        adapter: str | None | object = _ACTIVE,
    ) -> dict[str, np.ndarray]:
        """Outputs by name for ``inputs`` (a dict by input name, a list, or one array).

        ``adapter`` switches task first, as :meth:`set_adapter` does.
        """
        if adapter is not _ACTIVE:
            self.set_adapter(adapter)  # type: ignore[arg-type]
        feeds = self._feeds(inputs)
        try:
            outputs = self._session.run(None, feeds, self._run_options)
        except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
            raise BadInputError(f"the bundle could not run on these inputs: {error}") from None
        return dict(zip(self.output_names, outputs, strict=False))

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        names = list(self._inputs)
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if not isinstance(inputs, Mapping):
            if len(inputs) != len(names):
                raise BadInputError(f"the bundle takes {len(names)} inputs ({', '.join(names)}),"
                                    f" got {len(inputs)}")
            inputs = dict(zip(names, inputs, strict=False))
        missing = [n for n in names if n not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)} — the bundle takes "
                                f"{', '.join(names)}")
        feeds = {}
        for name in names:
            value = np.asarray(inputs[name])
            feeds[name] = self._conform(name, value)
        return feeds

    def _conform(self, name: str, value: np.ndarray) -> np.ndarray:
        info = self._inputs[name]
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32}.get(info.type)
        if dtype is not None and value.dtype != dtype:
            if np.issubdtype(dtype, np.integer) and value.dtype.kind == "f":
                raise BadInputError(f"input {name!r} must hold integers ({info.type}), got "
                                    f"{value.dtype}")
            value = value.astype(dtype)
        expected = info.shape
        if len(expected) != value.ndim or any(
            isinstance(e, int) and e != v for e, v in zip(expected, value.shape, strict=False)
        ):
            shown = ["?" if not isinstance(e, int) else e for e in expected]
            raise BadInputError(f"input {name!r} has shape {list(value.shape)}; the bundle "
                                f"expects {shown} (? = any size)")
        return np.ascontiguousarray(value)


def load(path: str | os.PathLike[str], threads: int | None = None) -> BundleSession:
    """Open and check a bundle, then return a session that runs it."""
    return Bundle.open(path).session(threads)


__all__ = [
    "Bundle",
    "BundleError",
    "BundleSession",
    "VerifyResult",
    "library_arch",
    "load",
    "read_manifest",
    "relative_error",
    "sha256_file",
]
