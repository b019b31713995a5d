"""The bundle manifest: its schema version, its JSON Schema, and a checker for it.

``manifest.schema.json`` (beside this file, and copied into every bundle) is the one
definition of what a manifest holds. :func:`check` validates a manifest against it with
a small validator written here, for the subset of JSON Schema the file uses — devices
read bundles with numpy and onnxruntime only, so no ``jsonschema`` dependency.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

#: Bumped when a manifest field changes meaning or a required field is added.
SCHEMA_VERSION = 1
SCHEMA_ID = "edgepet.bundle"
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@cache
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_FILE.read_text())


def check(manifest: Any) -> list[str]:
    """Every way ``manifest`` breaks the schema, as ``path: problem`` lines (empty: valid)."""
    root = schema()
    problems: list[str] = []
    _check(manifest, root, root, "manifest", problems)
    return problems


def _is(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    if type_name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[type_name])


def _check(value: Any, rule: dict, root: dict, path: str, problems: list[str]) -> None:
    if "$ref" in rule:
        ref = rule["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"manifest schema: unsupported $ref {ref}")
        rule = root["$defs"][ref.removeprefix("#/$defs/")]
    if "anyOf" in rule:
        if not any(not _errors(value, option, root) for option in rule["anyOf"]):
            problems.append(f"{path}: {_short(value)} matches none of the allowed forms")
        return
    types = rule.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in names):
            problems.append(f"{path}: expected {' or '.join(names)}, got {_short(value)}")
            return
    if "const" in rule and value != rule["const"]:
        problems.append(f"{path}: must be {rule['const']!r}, got {_short(value)}")
    if "enum" in rule and value not in rule["enum"]:
        problems.append(f"{path}: {_short(value)} is not one of {rule['enum']}")
    if "minimum" in rule and _is(value, "number") and value < rule["minimum"]:
        problems.append(f"{path}: {value} is below the minimum {rule['minimum']}")
    if "pattern" in rule and isinstance(value, str) and not re.search(rule["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {rule['pattern']}")
    if isinstance(value, dict):
        _check_object(value, rule, root, path, problems)
    if isinstance(value, list) and "items" in rule:
        for i, item in enumerate(value):
            _check(item, rule["items"], root, f"{path}[{i}]", problems)


def _check_object(value: dict, rule: dict, root: dict, path: str, problems: list[str]) -> None:
    for key in rule.get("required", []):
        if key not in value:
            problems.append(f"{path}: missing required field {key!r}")
    props = rule.get("properties", {})
    extra = rule.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            _check(item, props[key], root, f"{path}.{key}", problems)
        elif extra is False:
            problems.append(f"{path}: unknown field {key!r}")
        elif isinstance(extra, dict):
            _check(item, extra, root, f"{path}.{key}", problems)


def _errors(value: Any, rule: dict, root: dict) -> list[str]:
    found: list[str] = []
    _check(value, rule, root, "", found)
    return found


def missing_native(manifest: dict[str, Any], what: str = "op library") -> str | None:
    """Why a bundle carries no ``what`` ("op library" or "edgepet-run") and how to build
    it, as the manifest's ``operator.missing`` says; None when it does not say so."""
    for entry in manifest.get("operator", {}).get("missing") or []:
        if entry.get("what") == what:
            target = manifest.get("target", {}).get("name", "its target")
            return (f"the bundle carries no {what} for {target}: {entry['why']} — "
                    f"{entry['how']}")
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["SCHEMA_FILE", "SCHEMA_ID", "SCHEMA_VERSION", "check", "missing_native", "schema"]
