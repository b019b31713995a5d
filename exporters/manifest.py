"""Writing a bundle's ``manifest.json``: built once from what the export made, written once.

The schema, its version and its checker are :mod:`edgepet.runtime.manifest` (devices read
manifests without the exporter); this module only fills one in. Every file of the staged
bundle is hashed exactly once, by :func:`build_manifest`'s file table.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

import edgepet
from edgepet.exporters import bundle as bundle_writer
from edgepet.runtime import bundle as bundle_io
from edgepet.runtime import manifest as manifest_schema
from edgepet.runtime.operator import DOMAIN, OP_TYPE, OP_VERSION

if TYPE_CHECKING:
    from edgepet.exporters.rewrite import QuantPolicy, RewriteResult
    from edgepet.exporters.torch_export import LoadedModel
    from edgepet.targets import TargetProfile


def build_manifest(stage: Path, loaded: LoadedModel, profile: TargetProfile,
                   policy: QuantPolicy, quantizer: str, result: RewriteResult,
                   float_bytes: int, files: dict[str, Any], adapters: list[dict],
                   reference: dict[str, Any], pet_info: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the bundle staged in ``stage``, its files written and hashed.

    Call it after every file but the manifest is in place: the schema copy is written
    here, then the file table hashes each file once. ``float_bytes`` is the float
    model's weight size (:func:`initializer_bytes` of the graph before quantization).
    ``files``: what the export wrote besides the model — ``library`` and ``runner`` (the
    native files shipped for the target, or None), ``missing`` (those it could not ship,
    and how to build them), ``tflite`` (the converted float model, or absent).
    """
    import torch

    from edgepet.exporters.pipeline import TOLERANCE_VS_PYTORCH, TOLERANCE_VS_QUANTIZED
    from edgepet.kernels import LAYOUT

    per_task = reference["per_task"]
    for entry in adapters:
        entry["reference_outputs"], entry["quantized_outputs"] = per_task[entry["name"]]
    default_outputs = next(iter(per_task.values()))
    overridable = {p for a in adapters for p in a["parameters"]}
    model = result.model
    (stage / bundle_io.SCHEMA_COPY).write_text(manifest_schema.SCHEMA_FILE.read_text())
    table = bundle_writer.file_table(stage)
    weight_bytes = initializer_bytes(model)
    return {
        "schema": manifest_schema.SCHEMA_ID,
        "schema_version": manifest_schema.SCHEMA_VERSION,
        "edgepet_version": edgepet.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": profile.to_dict(),
        "quantization": {
            "bits": policy.bits, "group_size": policy.group_size,
            "symmetric": policy.symmetric, "quantizer": quantizer, "keep": list(policy.keep),
        },
        "operator": {
            "domain": DOMAIN, "op_type": OP_TYPE, "version": OP_VERSION,
            "layout": LAYOUT, "abi_version": bundle_io.op_abi_version(),
            "library": files["library"], "runner": files.get("runner"),
            "missing": files.get("missing") or [],
        },
        "model": {
            "file": bundle_io.MODEL, "external_data": files["external_data"],
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "ir_version": model.ir_version,
        },
        "inputs": [value_info(v) for v in model.graph.input if v.name not in overridable],
        "outputs": [value_info(v) for v in model.graph.output],
        "layers": [r.to_dict() for r in result.layers],
        "adapters": adapters,
        "reference": {
            "inputs": reference["inputs"],
            "outputs": default_outputs[0],
            "quantized_outputs": default_outputs[1],
            "tolerance": {
                "vs_pytorch": TOLERANCE_VS_PYTORCH[policy.bits],
                "vs_quantized": TOLERANCE_VS_QUANTIZED,
            },
        },
        "sizes": {
            "float_weight_bytes": float_bytes,
            "weight_bytes": weight_bytes,
            "linear_float_bytes": sum(r.float_bytes for r in result.layers),
            "linear_stored_bytes": sum(r.stored_bytes for r in result.layers),
            "adapter_bytes": sum(a["bytes"] for a in adapters),
            "bundle_bytes": sum(f["bytes"] for f in table.values()),
            "compression": round(float_bytes / max(weight_bytes, 1), 3),
        },
        "files": table,
        "baselines": {"tflite": files.get("tflite")},
        "provenance": {
            "source": loaded.source,
            "source_kind": loaded.kind,
            "source_sha256": (bundle_io.sha256_file(Path(loaded.source))
                              if loaded.source and Path(loaded.source).is_file() else None),
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
            "host": f"{platform.system()} {platform.machine()} python {sys.version.split()[0]}",
            "pet": pet_info,
        },
    }


def write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    """Check ``manifest`` against the schema and write it into ``stage`` (once)."""
    problems = manifest_schema.check(manifest)
    if problems:
        raise RuntimeError("edgepet wrote a manifest that breaks its schema: " + "; ".join(
            problems[:5]))
    (stage / bundle_io.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    """A graph input or output as the manifest lists it: name, dtype, shape (names for
    symbolic dimensions, None for unknown ones)."""
    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": dims}


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of a graph's initializers (its weights), whatever their dtype."""
    return sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


__all__ = ["build_manifest", "initializer_bytes", "value_info", "write_manifest"]
