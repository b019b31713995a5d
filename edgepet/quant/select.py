"""Choosing layers by name: the matching rules of edgepet.pet, edgepet.quant and export.

Two rules, each written once here. PET targets and quantization selections follow
Hugging Face PEFT's ``target_modules`` so users can reuse theirs:

* a single string is a regular expression that must match the *whole* name
  (``r".*\\.(q|v)"``);
* a list of strings matches a name that equals an entry or ends with ``"." + entry``
  (``["q", "v"]`` picks ``blocks.0.attn.q`` and ``blocks.1.attn.v``);
* ``"all-linear"`` is every linear layer except the output head (see the callers).

Layers an export keeps in float (``--keep``) are shell-style globs (:func:`glob_matches`):
``lm_head``, ``blocks.0.*``, ``*`` — a pattern also picks everything below the module it
names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

ALL_LINEAR = "all-linear"


def name_matches(name: str, patterns: str | Sequence[str]) -> bool:
    """Whether a module name is picked by ``patterns`` (see the module docstring)."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def glob_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches a shell-style glob in ``patterns``, or lies below a module
    one of them matches (``blocks.0`` picks ``blocks.0.attn.q``)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*")
               for p in patterns)


def select_names(
    names: Iterable[str],
    patterns: str | Sequence[str],
    what: str = "layer",
    argument: str = "target_modules",
) -> list[str]:
    """The names picked by ``patterns``, in order; ValueError if none is.

    ``what`` and ``argument`` word the error (e.g. "linear layer", "layers") so it says
    what was searched and which argument to fix.
    """
    names = list(names)
    if isinstance(patterns, str):
        try:
            re.compile(patterns)
        except re.error as e:
            raise ValueError(f"{argument}={patterns!r} is not a valid regex: {e}") from e
    elif not patterns:
        raise ValueError(f"{argument} is empty — name at least one layer or use 'all-linear'")
    picked = [n for n in names if name_matches(n, patterns)]
    if not picked:
        sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"{argument}={patterns!r} matches no {what} — the model's {what}s are: "
            f"{sample or '(none)'}; a string is a full-match regex, a list matches names "
            f"or name suffixes"
        )
    return picked
