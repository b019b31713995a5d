"""Bundles on disk: reading, checking, running and verifying them (no torch needed).

The writer side (staging folders, the file table) is ``edgepet.exporters.bundle``.

A bundle is a folder::

    manifest.json            what is here and how it was made (schema: manifest.schema.json)
    manifest.schema.json     the JSON Schema of manifest.json, for other tools
    model.onnx               the graph, LutMatMul nodes with packed weights
    model.onnx.data          its weights, when the model is large (ONNX external data)
    adapters/TASK.onnx_adapter   per-task parameters (ONNX Runtime adapter format)
    reference/               inputs, fp32 PyTorch outputs and dequantized-graph outputs

:meth:`Bundle.open` checks it before anything runs, and loads no library doing so: a
manifest that is not JSON, too large or nested too deeply, a path that leaves the folder
(absolute, ``..``, a symlink pointing out), a file the manifest names but its file table
does not list, a missing file, a size or hash that differs from the manifest, an unknown
schema version, or an operator ABI or layout the installed edgepet does not read is a
:class:`BundleError` that says which and what to do. Files the table does not list are
never read. Which op library a session loads is :meth:`Bundle.op_library`'s policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from edgepet.runtime import manifest as manifest_schema
from edgepet.runtime import session as sessions
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.session import library_arch

MANIFEST = "manifest.json"
SCHEMA_COPY = "manifest.schema.json"
MODEL = "model.onnx"
EXTERNAL_DATA = "model.onnx.data"
ADAPTER_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"
REFERENCE_DIR = "reference"
#: A manifest larger than this is not one edgepet wrote (a large LLM's is well under 1 MiB).
MAX_MANIFEST_BYTES = 16 << 20
#: Deepest nesting of objects and arrays a manifest may have (edgepet writes about 6).
MAX_MANIFEST_DEPTH = 32


class BundleError(BadInputError):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


def size_text(n: int) -> str:
    """A byte count for people: MB from 100 kB up, kB below."""
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Older operators a library still reads, by the library's ABI: (ABI, layout) of the
#: bundle -> the weight widths whose layout changed since (a bundle with such weights is
#: refused, the others load as they are). ABI 4 changed the 3-bit layout and added the
#: decoder ops, ABI 5 the attention op's shared cache buffer, ABI 6 LutMatMul's optional
#: zero_level attribute (docs/operator.md), so ABI-4 and ABI-5 bundles and an ABI-3 bundle
#: without 3-bit weights still run, and a new bundle is refused by an older library; the
#: op library decides the same per node.
OLDER_LAYOUTS: dict[int, dict[tuple[int, str], tuple[int, ...]]] = {
    4: {(3, "tile32-nibble4"): (3,)},
    5: {(3, "tile32-nibble4"): (3,), (4, "tile32-dot3"): ()},
    6: {(3, "tile32-nibble4"): (3,), (4, "tile32-dot3"): (), (5, "tile32-dot3"): ()},
}


@cache
def op_abi_version(path: str | None = None) -> int:
    """ABI version of an op library (default: the installed one), asked of the library.

    This loads the library (see :func:`edgepet.runtime.session.library_operator`).
    """
    return sessions.library_operator(path or sessions.op_library_path())[0]


def relative_error(y: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """``||y - ref|| / ||ref||`` over all outputs together (0 when both are zero)."""
    pairs = zip(y, ref, strict=True)
    num = sum(float(np.sum((np.asarray(a, np.float64) - b) ** 2)) for a, b in pairs)
    den = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in ref)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a reference ``.npz`` (no pickles); a damaged file is a BundleError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise BundleError(
            f"bundle file {path} is not a readable .npz ({_first_line(error)}) — the "
            "reference data is damaged; copy the bundle again, or export again"
        ) from None


def _check_op_set(model, model_file: Path) -> None:
    """The model imports ai.edgepet at the version this edgepet implements.

    ONNX Runtime runs a model importing any version of a custom domain with the op
    library's one schema and does not tell the library the import (docs/operator.md), so
    the check is made here.
    """
    from edgepet.runtime.operator import DOMAIN, OP_VERSION

    for opset in model.opset_import:
        if opset.domain == DOMAIN and opset.version != OP_VERSION:
            raise BundleError(
                f"{model_file} imports {DOMAIN} at op-set version {opset.version}; this "
                f"edgepet implements version {OP_VERSION} only — export the model with this "
                "edgepet, or run it with the edgepet that wrote it"
            )


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:200] + "…") if len(text) > 200 else text or type(error).__name__


def _outputs_of(arrays: dict[str, np.ndarray], names: Sequence[str], file: Path,
                shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The arrays named ``names`` from a reference file, shaped like the bundle's outputs."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BundleError(f"bundle file {file} has no array {missing[0]!r} (it holds "
                          f"{', '.join(arrays) or 'none'}) — the reference data does not "
                          "belong to this model; export again")
    found = [np.asarray(arrays[n], np.float64) for n in names]
    for name, array, shape in zip(names, found, shapes, strict=True):
        if array.shape != shape:
            raise BundleError(f"bundle file {file}: {name!r} has shape {list(array.shape)}, "
                              f"the model gives {list(shape)} — the reference data does not "
                              "belong to this model; export again")
    return found


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
    #: What the output is ("embedding", "logits" or "relative-l2") and the metrics that
    #: fit it: cosine_mean/cosine_min/top5_overlap for embeddings, top1_agreement/kl_mean
    #: for logits of >= 16 samples.
    kind: str = "relative-l2"
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Bounds the metrics are held to: ``{metric: (">=" | "<=", bound)}``.
    limits: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)

    def failures(self) -> list[str]:
        """Each missed bound, in words (empty when the result is within tolerance)."""
        missed = []
        if self.vs_quantized > self.tolerance_quantized:
            missed.append(f"error vs the dequantized graph {self.vs_quantized:.4f} > "
                          f"{self.tolerance_quantized}")
        if self.kind != "embedding" and self.vs_pytorch > self.tolerance_pytorch:
            missed.append(f"relative error vs PyTorch fp32 {self.vs_pytorch:.4f} > "
                          f"{self.tolerance_pytorch}")
        for name, (sense, bound) in self.limits.items():
            value = self.metrics.get(name)
            if value is None:
                continue
            if (sense == ">=" and value < bound) or (sense == "<=" and value > bound):
                missed.append(f"{name.replace('_', ' ')} {value:.4f} "
                              f"{'<' if sense == '>=' else '>'} {bound}")
        return missed

    @property
    def ok(self) -> bool:
        """Within every tolerance (for embeddings, cosine takes relative L2's place)."""
        return not self.failures()

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
            "kind": self.kind,
            "metrics": dict(self.metrics),
            "limits": {k: [s, b] for k, (s, b) in self.limits.items()},
        }


@dataclass
class Bundle:
    """A checked bundle folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str], check_files: bool = True) -> Bundle:
        """Read and check a bundle; no library is loaded (see the module doc).

        Checks, in order: the manifest (size, nesting, JSON, schema), that every path it
        names stays inside the folder and is in its file table, the operator ABI and
        layout against the installed edgepet, then (``check_files``) every listed file's
        size and SHA-256 and the model's external-data references.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path} is not a bundle folder — give the folder that "
                              "`edgepet export -o` wrote")
        manifest = read_manifest(path)
        bundle = cls(path, manifest)
        bundle.check_paths()
        bundle.check_operator()
        if check_files:
            bundle.check_files()
            bundle.check_model_references()
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

    def named_paths(self) -> Iterator[tuple[str, str]]:
        """Every file path the manifest names outside its file table, with its field."""
        m = self.manifest
        yield "model.file", m["model"]["file"]
        if m["model"].get("external_data"):
            yield "model.external_data", m["model"]["external_data"]
        for key in ("library", "runner"):
            if m["operator"].get(key):
                yield f"operator.{key}", m["operator"][key]
        if ((m.get("baselines") or {}).get("tflite") or {}).get("file"):
            yield "baselines.tflite.file", m["baselines"]["tflite"]["file"]
        if (m.get("text") or {}).get("tokenizer"):
            yield "text.tokenizer", m["text"]["tokenizer"]
        for key in ("inputs", "outputs", "quantized_outputs"):
            yield f"reference.{key}", m["reference"][key]
        for i, entry in enumerate(m["adapters"]):
            for key in ("file", "reference_outputs", "quantized_outputs"):
                if entry.get(key):
                    yield f"adapters[{i}].{key}", entry[key]

    def unlisted_files(self) -> list[str]:
        """Files in the folder that the file table does not list (never read)."""
        listed = set(self.manifest["files"]) | {MANIFEST}
        return sorted(rel for rel in (p.relative_to(self.path).as_posix()
                                      for p in self.path.rglob("*")
                                      if p.is_file() or p.is_symlink())
                      if rel not in listed)

    # --- checks -------------------------------------------------------------------------

    def check_paths(self) -> None:
        """Every path in the manifest stays inside the folder and is in the file table.

        Nothing is opened: absolute paths, ``..`` and symlinks that resolve outside the
        folder are refused by name and resolution alone.
        """
        root = self.path.resolve()
        manifest_file = self.path / MANIFEST
        for rel in self.manifest["files"]:
            _check_inside(root, rel, manifest_file, "files")
        for field, rel in self.named_paths():
            _check_inside(root, rel, manifest_file, field)
            if rel not in self.manifest["files"]:
                raise BundleError(
                    f"{manifest_file}: {field} names {rel!r}, which its file table does not "
                    "list — edgepet reads only files whose size and SHA-256 the manifest "
                    "records; export the bundle again"
                )

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

    def check_model_references(self) -> None:
        """The model's external-data references name listed files inside the bundle.

        ONNX Runtime opens the files a model's tensors point to; a model pointing out of
        the folder, or at a file the manifest does not list, is refused before that.
        """
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        model_file = self.model_path
        try:
            model = onnx.load(str(model_file), load_external_data=False)
        except Exception as error:  # noqa: BLE001 — protobuf's errors are its own types
            raise BundleError(f"bundle file {model_file} is not an ONNX model "
                              f"({_first_line(error)}) — export the bundle again") from None
        _check_op_set(model, model_file)
        base = PurePosixPath(self.manifest["model"]["file"]).parent
        root = self.path.resolve()
        for tensor in _all_tensors(model):
            if not uses_external_data(tensor):
                continue
            location = ExternalDataInfo(tensor).location
            field = f"tensor {tensor.name!r} of {self.manifest['model']['file']}"
            _check_inside(root, location, model_file, field)
            rel = (base / location).as_posix()
            _check_inside(root, rel, model_file, field)
            if rel not in self.manifest["files"]:
                raise BundleError(
                    f"{model_file}: {field} keeps its data in {location!r}, which the "
                    "manifest's file table does not list — edgepet reads only listed files; "
                    "export the bundle again"
                )

    def check_operator(self, have: tuple[int, str | None] | None = None,
                       library: str | None = None) -> None:
        """The operator ABI and layout in the manifest are those of the op library.

        ``have``: (ABI, layout) of the library to run with; None: the installed edgepet's
        (known without loading anything; skipped when it has no op library for this CPU —
        a shipped library is checked when a session loads it).
        """
        if have is None:
            if sessions.installed_op_library() is None:
                return
            have = sessions.installed_operator()
            if have is None:
                return
        op = self.manifest["operator"]
        abi, layout = have
        which = f"the op library {library}" if library else "the installed op library"
        if self._older_operator_readable(op, abi, which):
            return
        if op["abi_version"] != abi:
            newer = op["abi_version"] > abi
            raise BundleError(
                f"bundle {self.path} was made for op ABI {op['abi_version']}, {which} "
                f"speaks ABI {abi}"
                + (" and lacks operators the model uses (ABI 4 added the decoder ops "
                   "GroupQueryRotaryAttention and SwiGLU, ABI 5 the attention's shared "
                   "float16 cache buffer, ABI 6 LutMatMul's zero-level codes) — install "
                   "the edgepet version that "
                   f"made the bundle ({self.manifest['edgepet_version']}) or newer, or "
                   "export the model again with this edgepet" if newer else
                   " — export the model again with this edgepet, or install the edgepet "
                   f"version that made it ({self.manifest['edgepet_version']})")
            )
        if layout is not None and op["layout"] != layout:
            raise BundleError(
                f"bundle {self.path} packs weights in layout {op['layout']!r}, {which} reads "
                f"{layout!r} — export the model again with this edgepet"
            )

    def _older_operator_readable(self, op: dict, abi: int, which: str) -> bool:
        """Whether a library of ``abi`` reads this bundle of an older ABI as it is.

        True where the older (ABI, layout) differs from the library's only at weight
        widths the bundle has none of (``OLDER_LAYOUTS``); a BundleError naming the
        layers where it has some; False where the pair is not one the library reads.
        """
        widths = OLDER_LAYOUTS.get(abi, {}).get((op["abi_version"], op["layout"]))
        if widths is None:
            return False
        changed = [layer["name"] for layer in self.manifest.get("layers", [])
                   if layer.get("bits") in widths]
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            shown = ", ".join(changed[:3]) + more
            raise BundleError(
                f"bundle {self.path} was made for LutMatMul ABI {op['abi_version']}, whose "
                f"{'/'.join(map(str, widths))}-bit weights ({shown}) {which} (ABI {abi}) stores "
                "in another layout — export the model again with this edgepet"
            )
        return True

    def check_abi(self) -> None:
        """Kept for callers of the old name: :meth:`check_operator`."""
        self.check_operator()

    def op_library(self, trust_library: bool | None = None) -> str:
        """The op library a session of this bundle loads, by edgepet's policy.

        The installed edgepet's library whenever it fits this CPU. Otherwise the one the
        bundle ships, and only when ``trust_library`` (None: the environment variable
        ``EDGEPET_TRUST_BUNDLE_LIBRARY``) allows it, it is built for this CPU and its
        SHA-256 matches the manifest. Nothing is loaded here.
        """
        from edgepet.targets import host_arch

        installed = sessions.installed_op_library()
        if installed is not None:
            return installed
        shipped = self.manifest["operator"].get("library")
        if not shipped:
            why = manifest_schema.missing_native(self.manifest)
            raise BundleError(
                f"edgepet's op library for this machine ({host_arch()}) is not installed, "
                f"and bundle {self.path} ships none — "
                + (why or "reinstall edgepet (pip install .) so that the native build runs")
            )
        file = self.path / shipped
        arch = library_arch(file)
        if arch != host_arch():
            raise BundleError(
                f"edgepet's op library for this machine ({host_arch()}) is not installed, "
                f"and the one bundle {self.path} ships ({shipped}) is built for "
                f"{arch or 'an unknown architecture'} — install edgepet on this machine"
            )
        trusted = sessions.trust_bundle_library_from_env() if trust_library is None \
            else trust_library
        if not trusted:
            raise BundleError(
                f"bundle {self.path} ships its own op library ({shipped}), and the installed "
                "edgepet has none for this CPU; a library is code that runs in this process, "
                "so edgepet loads it only when you say so — pass --trust-bundle-library "
                f"(Python: trust_library=True; apps: {sessions.TRUST_BUNDLE_LIBRARY_ENV}=1) "
                "if you trust where the bundle came from, or install edgepet on this machine"
            )
        entry = self.manifest["files"].get(shipped)
        if entry is None or sha256_file(file) != entry["sha256"]:
            raise BundleError(
                f"bundle file {shipped} does not match the SHA-256 in manifest.json — "
                "refusing to load a changed library; copy the bundle again from its source"
            )
        return str(file)

    # --- running ------------------------------------------------------------------------

    def session(self, threads: int | None = None,
                trust_library: bool | None = None) -> BundleSession:
        """An ONNX Runtime session for the bundle, adapters ready to switch.

        ``trust_library``: allow loading an op library shipped in the bundle when the
        installed edgepet has none for this CPU (None: ``EDGEPET_TRUST_BUNDLE_LIBRARY``).
        """
        return BundleSession(self, threads, trust_library)

    def reference_inputs(self) -> dict[str, np.ndarray]:
        return _load_npz(self.path / self.manifest["reference"]["inputs"])

    def reference_outputs(self, adapter: str | None = None) -> tuple[dict, dict]:
        """(fp32 PyTorch outputs, dequantized-graph outputs) for a task."""
        torch_file, quant_file = self._reference_files(adapter)
        return _load_npz(torch_file), _load_npz(quant_file)

    def _reference_files(self, adapter: str | None) -> tuple[Path, Path]:
        ref = self.manifest["reference"]
        entry = next((a for a in self.manifest["adapters"] if a["name"] == adapter), None)
        torch_file = (entry or {}).get("reference_outputs") or ref["outputs"]
        quant_file = (entry or {}).get("quantized_outputs") or ref["quantized_outputs"]
        return self.path / torch_file, self.path / quant_file

    def verify(self, threads: int | None = None,
               trust_library: bool | None = None) -> list[VerifyResult]:
        """Run ``reference/`` through the bundle (each adapter in turn) and measure errors."""
        session = self.session(threads, trust_library)
        inputs = self.reference_inputs()
        tol = self.manifest["reference"]["tolerance"]
        spec = self.manifest["reference"].get("metrics") or {}
        names = [o["name"] for o in self.manifest["outputs"]]
        results = []
        for adapter in self.adapters or [None]:
            session.set_adapter(adapter)
            got = session.run(inputs)
            missing = [n for n in names if n not in got]
            if missing:
                raise BundleError(f"{self.path / MANIFEST} lists output {missing[0]!r}, which "
                                  f"the model does not have ({', '.join(got)}) — export again")
            y = [got[n] for n in names]
            shapes = [a.shape for a in y]
            files = self._reference_files(adapter)
            fp32 = _outputs_of(_load_npz(files[0]), names, files[0], shapes)
            quant = _outputs_of(_load_npz(files[1]), names, files[1], shapes)
            kind, metrics, limits = output_metrics(spec, names, y, fp32)
            results.append(VerifyResult(
                adapter=adapter,
                vs_pytorch=relative_error(y, fp32),
                vs_quantized=relative_error(y, quant),
                max_abs_vs_pytorch=max(float(np.max(np.abs(a - r))) if a.size else 0.0
                                       for a, r in zip(y, fp32, strict=True)),
                top1_agreement=metrics.get("top1_agreement"),
                tolerance_pytorch=float(tol["vs_pytorch"]),
                tolerance_quantized=float(tol["vs_quantized"]),
                kind=kind, metrics=metrics, limits=limits,
            ))
        return results


def _check_inside(root: Path, rel: Any, named_in: Path, field: str) -> None:
    """``rel`` is a plain relative path whose resolution (symlinks followed) is in ``root``."""
    why = None
    if not isinstance(rel, str) or not rel:
        why = "is not a file name"
    elif "\\" in rel or "\0" in rel:
        why = "holds a backslash or NUL"
    elif PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        why = "is an absolute path"
    elif any(part in ("", ".", "..") for part in rel.split("/")):
        why = "has an empty, '.' or '..' component"
    elif not (root / rel).resolve().is_relative_to(root):
        why = "resolves (through a symlink) to a place outside the bundle folder"
    if why is not None:
        raise BundleError(
            f"{named_in}: {field} names {rel!r}, which {why} — a bundle may name only files "
            "inside its own folder; do not use this bundle, get it again from its source "
            "or export it again"
        )


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of a model: initializers and attribute tensors, in every graph."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


#: Fewest samples for which top-1 agreement and KL of logits mean something.
MIN_LOGIT_SAMPLES = 16
#: Retrieval overlap looks at the 5 nearest other rows, so it needs at least 7 rows.
RETRIEVAL_K = 5


def output_metrics(spec: dict[str, Any], names: Sequence[str], y: Sequence[np.ndarray],
                   ref: Sequence[np.ndarray]
                   ) -> tuple[str, dict[str, float], dict[str, tuple[str, float]]]:
    """(kind, metrics, limits) for the output ``spec["output"]`` (default: the first).

    ``spec`` is the manifest's ``reference.metrics``: ``kind`` "embedding" (cosine mean and
    minimum per row, top-5 retrieval overlap), "logits" (top-1 agreement and mean KL of
    the softmax, only for >= 16 rows) or "relative-l2"; ``limits`` the bounds.
    """
    kind = spec.get("kind", "relative-l2")
    index = names.index(spec["output"]) if spec.get("output") in names else 0
    got, want = np.asarray(y[index], np.float64), np.asarray(ref[index], np.float64)
    metrics: dict[str, float] = {}
    if kind == "embedding" and got.ndim >= 2:
        a, b = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        cos = np.sum(a * b, -1) / np.maximum(
            np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        metrics["cosine_mean"] = float(np.mean(cos))
        metrics["cosine_min"] = float(np.min(cos))
        overlap = retrieval_overlap(a, b, RETRIEVAL_K)
        if overlap is not None:
            metrics["top5_overlap"] = overlap
    elif kind == "logits" and got.ndim >= 2 and got.shape[-1] >= 2:
        a, b = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        if a.shape[0] >= MIN_LOGIT_SAMPLES:
            metrics["top1_agreement"] = float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))
            metrics["kl_mean"] = float(np.mean(_kl(b, a)))
    limits = {k: (str(v[0]), float(v[1])) for k, v in (spec.get("limits") or {}).items()}
    return kind, metrics, limits


def retrieval_overlap(y: np.ndarray, ref: np.ndarray, k: int = RETRIEVAL_K) -> float | None:
    """Mean share of each row's ``k`` nearest other rows (cosine) that ``y`` and ``ref``
    agree on; None with fewer than ``k + 2`` rows."""
    if y.shape[0] < k + 2:
        return None

    def neighbours(x: np.ndarray) -> np.ndarray:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=-1)[:, :k]

    a, b = neighbours(y), neighbours(ref)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b, strict=True)]))


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - np.max(x, -1, keepdims=True)
        return x - np.log(np.sum(np.exp(x), -1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def _depth(value: Any) -> int:
    """Deepest nesting of lists and dicts in a parsed JSON value (iterative)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def read_manifest(path: Path) -> dict[str, Any]:
    """manifest.json of bundle folder ``path``, checked against the schema."""
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} has no {MANIFEST} — it is not an edgepet bundle (or an "
                          "export did not finish); export again")
    _check_inside(path.resolve(), MANIFEST, file, "the manifest itself")
    size = file.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{file} has {size:,} bytes, more than any manifest edgepet writes "
                          f"({MAX_MANIFEST_BYTES:,}) — it is not an edgepet manifest; export "
                          "again")
    try:
        manifest = json.loads(file.read_bytes())
    except RecursionError:
        raise BundleError(f"{file} is nested too deeply to be an edgepet manifest — the file "
                          "is damaged or hostile; export again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{file} is not valid JSON ({error}) — the file is damaged; "
                          "export again") from None
    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise BundleError(f"{file} is nested more than {MAX_MANIFEST_DEPTH} levels deep, which "
                          "no edgepet manifest is — the file is damaged or hostile; export "
                          "again")
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

    def __init__(self, bundle: Bundle, threads: int | None = None,
                 trust_library: bool | None = None) -> None:
        import onnxruntime as ort

        from edgepet.runtime import session_options

        self.bundle = bundle
        library = bundle.op_library(trust_library)
        try:
            bundle.check_operator(sessions.library_operator(library), library)
        except (OSError, AttributeError) as error:
            raise BundleError(f"the op library {library} cannot be loaded: "
                              f"{_first_line(error)} — reinstall edgepet") from None
        try:
            options = session_options(threads, library=library)
        except ValueError as error:  # a bad thread count: the user's input
            raise BadInputError(str(error)) from None
        except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
            raise BundleError(f"ONNX Runtime cannot register the op library {library}: "
                              f"{_first_line(error)} — reinstall edgepet") from None
        # Adapter parameters are initializers listed as inputs; ORT warns about each.
        # Errors come back as exceptions (and messages of ours), not as ORT log lines.
        options.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(str(bundle.model_path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001
            raise BundleError(
                f"ONNX Runtime refuses bundle file {bundle.model_path}: {_first_line(error)} "
                "— the model is damaged or was made for another edgepet; export it again"
            ) from None
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
                file = self.bundle.adapter_path(name)
                adapter = self._ort.LoraAdapter()
                try:
                    adapter.Load(str(file))
                except Exception as error:  # noqa: BLE001 — ORT's errors are its own types
                    raise BundleError(
                        f"bundle file {file} is not a readable adapter ({_first_line(error)})"
                        " — it is damaged; copy the bundle again, or export again"
                    ) from None
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


def load(path: str | os.PathLike[str], threads: int | None = None,
         trust_library: bool | None = None) -> BundleSession:
    """Open and check a bundle, then return a session that runs it (for a decoder bundle,
    a :class:`~edgepet.runtime.generate.DecoderSession` that also generates).

    ``trust_library``: see :meth:`Bundle.session`.
    """
    bundle = Bundle.open(path)
    if bundle.manifest.get("kind") == "decoder":
        from edgepet.runtime.generate import DecoderSession

        return DecoderSession(bundle, threads, trust_library)
    return bundle.session(threads, trust_library)


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
    "size_text",
]
