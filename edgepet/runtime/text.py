"""Text in, token arrays out, on the device: the bundle's ``tokenizer.json`` through the
``tokenizers`` package (no torch, no transformers).

A bundle exported from a Hugging Face encoder carries its tokenizer and a ``text``
section in the manifest (task, input names, max length, pooling, labels);
:class:`TextEncoder` turns a list of strings into the arrays the graph takes
(``input_ids``, ``attention_mask``, ``token_type_ids``), padded to the longest text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.runtime.errors import BadInputError


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise BadInputError("taking text needs the tokenizers package — pip install "
                            "tokenizers (or 'edgepet[hf]')") from None
    return tokenizers


class TextEncoder:
    """Tokenizes texts into the arrays a text bundle takes."""

    def __init__(self, tokenizer: Any, input_names: Sequence[str], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.input_names = list(input_names)
        self.max_length = int(max_length)
        tokenizer.enable_truncation(max_length=self.max_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            pad_id = tokenizer.token_to_id("<pad>")
        padding = tokenizer.padding or {}
        tokenizer.enable_padding(pad_id=padding.get("pad_id", pad_id or 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))

    @classmethod
    def from_str(cls, text: str, input_names: Sequence[str], max_length: int) -> TextEncoder:
        """From the JSON text of a ``tokenizer.json``."""
        return cls(_tokenizers().Tokenizer.from_str(text), input_names, max_length)

    @classmethod
    def from_bundle(cls, bundle: Any) -> TextEncoder:
        """From a :class:`~edgepet.runtime.bundle.Bundle` whose manifest has ``text``."""
        section = bundle.manifest.get("text")
        if not section or not section.get("tokenizer"):
            raise BadInputError(
                f"bundle {bundle.path} carries no tokenizer, so it cannot take text — give "
                "token arrays with --input x.npz, or export it from a Hugging Face folder "
                "that has its tokenizer files")
        file = Path(bundle.path) / section["tokenizer"]
        try:
            tokenizer = _tokenizers().Tokenizer.from_file(str(file))
        except Exception as error:  # noqa: BLE001 — tokenizers raises its own exceptions
            raise BadInputError(f"{file} is not a readable tokenizer ({error}) — export the "
                                "bundle again") from None
        return cls(tokenizer, section["inputs"], section["max_length"])

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Arrays by input name, one row per text, padded to the longest (int64)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise BadInputError("no text given — pass --text at least once, or a --text-file "
                                "with one input per line")
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        missing = [n for n in self.input_names if n not in arrays]
        if missing:
            raise BadInputError(f"the bundle takes {missing[0]!r}, which a tokenizer does not "
                                "give — pass the arrays with --input x.npz")
        return {n: arrays[n] for n in self.input_names}


def read_text_file(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one input per line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"text file {file} is not readable UTF-8 text ({error}) — one "
                            "input per line") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise BadInputError(f"text file {file} holds no text — one input per line")
    return texts


__all__ = ["TextEncoder", "read_text_file"]
