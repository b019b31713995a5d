"""The tokenizer and chat template a decoder bundle carries (no torch, no exporter).

``tokenizer.json`` is the Hugging Face ``tokenizers`` format (a GGUF's vocabulary is
converted to it at export); the chat template is Jinja, rendered with ``jinja2`` when it is
installed and otherwise recognised as ChatML (``<|im_start|>role\\n...<|im_end|>``), the
template of SmolLM2 and many small instruct models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepet.runtime.errors import BadInputError


class Tokenizer:
    """Text <-> token ids for one decoder bundle, plus its chat template and special ids."""

    def __init__(self, file: str | Path, chat_template: str | None = None,
                 bos_token_id: int | None = None, eos_token_ids: Sequence[int] = (),
                 add_bos_token: bool = False) -> None:
        try:
            import tokenizers
        except ImportError:
            raise BadInputError("decoder bundles need the tokenizers package — pip install "
                                "tokenizers (or 'edgepet[llm]')") from None
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as error:  # noqa: BLE001 — tokenizers raises plain Exception
            raise BadInputError(f"{file} is not a readable tokenizer.json ({error})") from None
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.add_bos_token = add_bos_token

    @classmethod
    def from_bundle(cls, path: Path, decoder: dict[str, Any]) -> Tokenizer:
        """The tokenizer of bundle folder ``path`` (its manifest's ``decoder`` section)."""
        return cls(path / decoder["tokenizer"], decoder.get("chat_template"),
                   decoder.get("bos_token_id"), decoder.get("eos_token_ids", []),
                   bool(decoder.get("add_bos_token", False)))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are recognised.

        ``add_bos`` (default: the model's setting) prepends the BOS token.
        """
        ids = self._tok.encode(text, add_special_tokens=False).ids
        add_bos = self.add_bos_token if add_bos is None else add_bos
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (special tokens dropped unless ``skip_special`` is False)."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: Sequence[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation (``[{"role", "content"}, ...]``)."""
        template = self.chat_template
        if not template:
            raise BadInputError("this bundle has no chat template — use --prompt with the "
                                "text to continue instead of --chat")
        try:
            import jinja2
        except ImportError:
            return _chatml(template, messages, add_generation_prompt)
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                                 undefined=jinja2.StrictUndefined)
        env.globals["raise_exception"] = _raise
        specials = {"bos_token": self._special(self.bos_token_id),
                    "eos_token": self._special(self.eos_token_ids[0] if self.eos_token_ids
                                               else None)}
        try:
            return env.from_string(template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                **specials)
        except jinja2.TemplateError as error:
            raise BadInputError(f"the bundle's chat template failed: {error}") from None

    def _special(self, token_id: int | None) -> str:
        return "" if token_id is None else self._tok.id_to_token(token_id) or ""


def _raise(message: str) -> None:
    raise BadInputError(f"the chat template refused the conversation: {message}")


def _chatml(template: str, messages: Sequence[dict[str, str]], add_prompt: bool) -> str:
    if "<|im_start|>" not in template:
        raise BadInputError("rendering this chat template needs jinja2 — pip install jinja2")
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_prompt else "")


class StreamDecoder:
    """Turns token ids into text pieces as they come, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._shown = 0

    def push(self, token_id: int) -> str:
        """The new text after ``token_id`` (may be empty while a character is incomplete)."""
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character: wait for the next token
        piece, self._shown = text[self._shown:], len(text)
        return piece

    def finish(self) -> str:
        """What is left when generation ends (an incomplete character shows as U+FFFD)."""
        text = self._tokenizer.decode(self._ids)
        piece, self._shown = text[self._shown:], len(text)
        return piece


__all__ = ["StreamDecoder", "Tokenizer"]
