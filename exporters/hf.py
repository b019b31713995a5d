"""Hugging Face encoders in: local folders, cached names and ``transformers`` objects.

An encoder (BERT, MiniLM, RoBERTa, DistilBERT, ...) is wrapped so that its graph takes
the inputs its ``forward`` takes, under their own names (``input_ids``,
``attention_mask``, ``token_type_ids``), with the batch and sequence axes dynamic and
named ``batch`` and ``sequence``, and returns named tensors instead of a model-output
dataclass. Three tasks:

- ``feature-extraction``: every tensor of the model's output (``last_hidden_state``,
  ``pooler_output`` when the model has a pooler);
- ``sentence-embedding``: ``sentence_embedding``, the pooled (mean over the attention
  mask, or the CLS token — read from the folder's sentence-transformers config when it
  has one) and L2-normalized hidden state, in the graph;
- ``text-classification``: ``logits`` of a ``...ForSequenceClassification`` model.

Nothing is downloaded: a name is resolved only in the local Hugging Face cache. The
tokenizer travels in the bundle as ``tokenizer.json`` (the ``tokenizers`` format, read on
the device by :mod:`edgepet.runtime.text`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgepet.runtime.errors import BadInputError

TASKS = ("feature-extraction", "sentence-embedding", "text-classification")
#: Encoder families this loader exports (``config.json``'s ``model_type``).
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet",
                 "camembert", "albert", "deberta", "deberta-v2")
#: Decoder families: they belong to the LLM path, not this loader.
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2",
                 "gpt2", "gpt_neox", "smollm", "olmo", "falcon")
#: The inputs an encoder may take, in the order the graph lists them.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Tokens per text when the bundle tokenizes (and for the reference inputs).
DEFAULT_MAX_LENGTH = 128

#: Real sentences for reference inputs when the user gives no --calibration file: short,
#: varied, everyday English (written for edgepet).
SAMPLE_SENTENCES = (
    "The train to the airport leaves every twenty minutes.",
    "She forgot her umbrella and got soaked on the way home.",
    "How do I reset my password if I no longer have the old phone?",
    "The quarterly report shows a small rise in operating costs.",
    "A cup of green tea contains less caffeine than coffee.",
    "The museum is closed on Mondays and public holidays.",
    "Our cat sleeps on the windowsill whenever the sun is out.",
    "Please send the signed contract back before Friday.",
    "The recipe calls for two eggs, flour, butter and a pinch of salt.",
    "Heavy rain is expected in the north of the country tonight.",
    "He learned to play the guitar by watching videos online.",
    "The battery drains quickly when the screen brightness is high.",
    "Which platform does the next train to Leeds leave from?",
    "The children built a sandcastle near the edge of the water.",
    "Interest rates were left unchanged at the latest meeting.",
    "My laptop fan gets loud whenever I open a video call.",
    "The hotel offers free breakfast and late checkout for members.",
    "Scientists found traces of water ice near the lunar south pole.",
    "The library extended its opening hours during exam season.",
    "Can you recommend a good book about the history of Rome?",
    "The bakery on the corner sells fresh bread every morning.",
    "Traffic was slow because of roadworks on the main bridge.",
    "The new phone has a better camera but a smaller battery.",
    "We planted tomatoes, basil and peppers in the garden this spring.",
    "The concert was cancelled because the singer had a cold.",
    "Remember to water the plants while we are away.",
    "The software update fixed the bug that crashed the app.",
    "A healthy breakfast helps you concentrate in the morning.",
    "The team celebrated after winning the final in extra time.",
    "The flight was delayed by three hours due to fog.",
    "This jacket is warm enough for a winter in Canada.",
    "The river flooded the fields after a week of storms.",
)


@dataclass
class TextSpec:
    """How a text model's bundle takes text: its tokenizer, task and pooling."""

    task: str
    input_names: list[str]
    output_names: list[str]
    model_type: str
    tokenizer_json: str | None = None  # the tokenizers JSON text
    max_length: int = DEFAULT_MAX_LENGTH
    pooling: str | None = None  # "mean" | "cls" for sentence-embedding
    normalize: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def to_manifest(self, tokenizer_file: str | None) -> dict[str, Any]:
        """The manifest's ``text`` section."""
        return {"task": self.task, "model_type": self.model_type,
                "tokenizer": tokenizer_file, "max_length": self.max_length,
                "inputs": list(self.input_names), "pooling": self.pooling,
                "normalize": self.normalize, "labels": dict(self.labels)}


# --- resolving a folder or a name -----------------------------------------------------------


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a Hugging Face ``config.json``."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def is_encoder_folder(path: Any) -> bool:
    """True for a Hugging Face folder whose ``model_type`` is an encoder this loader takes
    (decoder folders go to the LLM export)."""
    if not isinstance(path, (str, os.PathLike)) or not is_hf_folder(path):
        return False
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((Path(path) / "config.json").read_text())
        return isinstance(config, dict) and config.get("model_type") in ENCODER_TYPES
    return False


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder for ``--hf NAME_OR_PATH``: the folder itself, or the name's snapshot
    in the Hugging Face cache. Nothing is downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(
                f"{path} is a folder without config.json — a Hugging Face model folder holds "
                "config.json, the weights (model.safetensors or pytorch_model.bin) and the "
                "tokenizer files; save one with model.save_pretrained(DIR) and "
                "tokenizer.save_pretrained(DIR)")
        return path
    name = str(name_or_path)
    snapshot = None
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name, local_files_only=True)
    if snapshot and (Path(snapshot) / "config.json").is_file():
        return Path(snapshot)
    raise BadInputError(
        f"--hf {name!r} is neither a local folder nor a model in the Hugging Face cache here "
        "— edgepet never downloads (devices and build machines may have no network). On a "
        f"machine with network run `huggingface-cli download {name} --local-dir DIR` (or "
        f"save_pretrained model and tokenizer into DIR), copy DIR here, then "
        "`edgepet export DIR`")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BadInputError(f"{path} is not readable JSON ({error}) — copy the model folder "
                            "again") from None


def _check_model_type(model_type: str, where: str) -> None:
    if model_type in ENCODER_TYPES:
        return
    if model_type in DECODER_TYPES:
        raise BadInputError(
            f"{where} is a {model_type} decoder; `edgepet export FOLDER` takes encoders "
            f"({', '.join(ENCODER_TYPES)}) — Llama-family decoders go through edgepet's LLM "
            "export (docs/llm.md)")
    raise BadInputError(
        f"{where} is a {model_type or 'unknown'} model; edgepet exports Hugging Face "
        f"encoders ({', '.join(ENCODER_TYPES)}) for {', '.join(TASKS)} — for another "
        "architecture, write a torch.nn.Module wrapper that returns tensors and save it with "
        "torch.export.save (docs/real_models.md)")


def _need_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise BadInputError("Hugging Face models need the transformers and tokenizers "
                            "packages — pip install 'edgepet[hf]'") from None
    return transformers


# --- loading ----------------------------------------------------------------------------------


def load_folder(folder: str | os.PathLike[str], task: str | None = None,
                max_length: int | None = None) -> tuple[nn.Module, TextSpec]:
    """A wrapped encoder and its text spec from a local Hugging Face folder."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    model_type = str(config.get("model_type", ""))
    _check_model_type(model_type, str(folder))
    weights = [n for n in ("model.safetensors", "pytorch_model.bin",
                           "model.safetensors.index.json", "pytorch_model.bin.index.json")
               if (folder / n).is_file()]
    if not weights:
        raise BadInputError(f"{folder} has config.json but no weights (model.safetensors or "
                            "pytorch_model.bin) — save them with model.save_pretrained(DIR)")
    task = task or _default_task(folder, config)
    if task not in TASKS:
        raise BadInputError(f"--task {task!r} is unknown — use {', '.join(TASKS)}")
    transformers = _need_transformers()
    transformers.utils.logging.disable_progress_bar()
    auto = (transformers.AutoModelForSequenceClassification if task == "text-classification"
            else transformers.AutoModel)
    try:
        with _offline():
            model = auto.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 — transformers raises many kinds
        raise BadInputError(f"transformers could not load {folder}: {_first_line(error)} — "
                            "check that the folder is complete (config.json and weights)"
                            ) from None
    tokenizer_json = tokenizer_from_folder(folder)
    pooling, normalize = _pooling(folder) if task == "sentence-embedding" else (None, False)
    return wrap(model, task, tokenizer_json, pooling, normalize, max_length)


def from_transformers(model: nn.Module, task: str | None = None, tokenizer: Any = None,
                      max_length: int | None = None) -> tuple[nn.Module, TextSpec]:
    """A wrapped encoder from a ``transformers`` model object (``tokenizer``: a fast
    tokenizer object, a folder, or None to look in the model's own folder)."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", ""))
    _check_model_type(model_type, f"the {type(model).__name__}")
    if task is None:
        task = ("text-classification" if type(model).__name__.endswith(
            "ForSequenceClassification") else "feature-extraction")
    if task not in TASKS:
        raise BadInputError(f"task {task!r} is unknown — use {', '.join(TASKS)}")
    if task == "text-classification" and not hasattr(model(**_dummy(model)), "logits"):
        raise BadInputError("task text-classification needs a ...ForSequenceClassification "
                            f"model, got {type(model).__name__}")
    tokenizer_json = None
    pooling, normalize = "mean", True
    source = Path(str(getattr(config, "_name_or_path", "") or ""))
    if tokenizer is not None:
        tokenizer_json = _tokenizer_text(tokenizer)
    elif source.is_dir():
        with contextlib.suppress(BadInputError):
            tokenizer_json = tokenizer_from_folder(source)
    if task == "sentence-embedding" and source.is_dir():
        pooling, normalize = _pooling(source)
    if task != "sentence-embedding":
        pooling, normalize = None, False
    return wrap(model.eval(), task, tokenizer_json, pooling, normalize, max_length)


def is_transformers_model(model: Any) -> bool:
    """True for a ``transformers.PreTrainedModel`` (without importing transformers)."""
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(model).__mro__)


def _default_task(folder: Path, config: dict) -> str:
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return "sentence-embedding"
    if any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures")
           or ()):
        return "text-classification"
    return "feature-extraction"


def _pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers folder; mean by default. A
    sentence embedding is always L2-normalized in the graph (cosine is what it is for)."""
    pooling = "mean"
    modules = folder / "modules.json"
    if modules.is_file():
        entries = [e for e in _read_json(modules) if isinstance(e, dict)]
        for entry in entries:
            if str(entry.get("type", "")).endswith("Pooling"):
                config = folder / str(entry.get("path", "")) / "config.json"
                if config.is_file():
                    pooling = _pooling_mode(_read_json(config), config)
    return pooling, True


def _pooling_mode(config: dict, where: Path) -> str:
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens") or config.get("pooling_mode") == "mean":
        return "mean"
    raise BadInputError(f"{where} asks for a pooling edgepet does not put in the graph "
                        f"({ {k: v for k, v in config.items() if v is True} }) — supported: "
                        "mean over the attention mask, CLS token; use --task "
                        "feature-extraction and pool on the device")


# --- the tokenizer ----------------------------------------------------------------------------


def tokenizer_from_folder(folder: Path) -> str:
    """The ``tokenizers`` JSON of a folder: its tokenizer.json, or one converted from the
    slow tokenizer files (vocab.txt, ...) by transformers."""
    file = folder / "tokenizer.json"
    if file.is_file():
        text = file.read_text()
        _check_tokenizer(text, file)
        return text
    slow = [n for n in ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spm.model",
                        "tokenizer.model") if (folder / n).is_file()]
    if not slow:
        raise BadInputError(
            f"{folder} has no tokenizer (tokenizer.json, or vocab.txt/vocab.json/"
            "sentencepiece files) — the bundle carries the tokenizer so the device can take "
            "text; save it into the folder with AutoTokenizer.from_pretrained(NAME)"
            ".save_pretrained(DIR)")
    transformers = _need_transformers()
    try:
        with _offline():
            tok = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True,
                                                             local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise BadInputError(f"the tokenizer in {folder} could not be read: "
                            f"{_first_line(error)}") from None
    return _tokenizer_text(tok)


def _tokenizer_text(tokenizer: Any) -> str:
    if isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer_from_folder(Path(tokenizer))
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer,
                                                                       "_tokenizer", None)
    if backend is None and hasattr(tokenizer, "to_str"):
        backend = tokenizer
    if backend is None:
        raise BadInputError(f"tokenizer {type(tokenizer).__name__} is not a fast "
                            "(tokenizers-backed) tokenizer — pass a PreTrainedTokenizerFast "
                            "or the model folder")
    return backend.to_str()


def _check_tokenizer(text: str, where: Path) -> None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BadInputError("reading tokenizer.json needs the tokenizers package — pip "
                            "install 'edgepet[hf]'") from None
    try:
        Tokenizer.from_str(text)
    except Exception as error:  # noqa: BLE001
        raise BadInputError(f"{where} is not a tokenizers tokenizer ({_first_line(error)}) — "
                            "save it again with tokenizer.save_pretrained(DIR)") from None


# --- the wrapper ------------------------------------------------------------------------------


class EncoderForExport(nn.Module):
    """An encoder whose positional inputs are ``input_names`` and whose outputs are a tuple
    of tensors (named by :attr:`output_names`)."""

    def __init__(self, model: nn.Module, input_names: list[str], task: str,
                 pooling: str | None, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.task = task
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        out = self.model(**kwargs, return_dict=True)
        if self.task == "text-classification":
            return (out.logits,)
        if self.task == "feature-extraction":
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = kwargs.get("attention_mask")
            if mask is None:
                pooled = hidden.mean(dim=1)
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=-1)
        return (pooled,)


def wrap(model: nn.Module, task: str, tokenizer_json: str | None, pooling: str | None,
         normalize: bool, max_length: int | None = None) -> tuple[nn.Module, TextSpec]:
    """Wrap a transformers encoder for export; outputs named after its output dataclass."""
    model = model.eval()
    accepted = set(inspect.signature(model.forward).parameters)
    input_names = [n for n in TEXT_INPUTS if n in accepted]
    if "input_ids" not in input_names:
        raise BadInputError(f"{type(model).__name__}.forward takes no input_ids — edgepet "
                            "exports text encoders")
    config = model.config
    if getattr(config, "type_vocab_size", 2) < 2 and "token_type_ids" in input_names:
        input_names.remove("token_type_ids")  # one segment: the graph would ignore it
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    max_length = min(max_length or DEFAULT_MAX_LENGTH, limit)
    wrapper = EncoderForExport(model, input_names, task, pooling, normalize)
    with torch.no_grad():
        out = model(**_dummy(model, input_names), return_dict=True)
    if task == "text-classification":
        outputs = ["logits"]
    elif task == "sentence-embedding":
        outputs = ["sentence_embedding"]
    else:
        outputs = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    labels = {str(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()} \
        if task == "text-classification" else {}
    spec = TextSpec(task, input_names, outputs, str(config.model_type), tokenizer_json,
                    max_length, pooling, normalize, labels)
    wrapper.max_sequence = limit
    return wrapper, spec


def _dummy(model: nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    names = names or ["input_ids"]
    ids = torch.full((2, 8), 5, dtype=torch.long)
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    return {n: feeds[n] for n in names}


def example_inputs(spec: TextSpec, texts: list[str] | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Reference inputs: ``texts`` (or :data:`SAMPLE_SENTENCES`) through the tokenizer; with
    no tokenizer, random token ids with some padding."""
    if spec.tokenizer_json is not None:
        from edgepet.runtime.text import TextEncoder

        encoder = TextEncoder.from_str(spec.tokenizer_json, spec.input_names, spec.max_length)
        feeds = encoder.encode(list(texts or SAMPLE_SENTENCES))
        return tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (8, 16), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(0, 8, 2):
        mask[row, 10 + row // 2:] = 0
    feeds = {"input_ids": ids * mask, "attention_mask": mask,
             "token_type_ids": torch.zeros_like(ids)}
    return tuple(feeds[n] for n in spec.input_names)


def dynamic_shapes(spec: TextSpec, max_sequence: int) -> tuple[Any, ...]:
    """``batch`` and ``sequence`` as named dynamic axes of every text input."""
    batch = torch.export.Dim("batch", max=1 << 16)
    sequence = torch.export.Dim("sequence", max=max_sequence)
    # One entry: the wrapper's ``*inputs``, a tuple with one spec per input.
    return (tuple({0: batch, 1: sequence} for _ in spec.input_names),)


@contextlib.contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(error).__name__


__all__ = ["SAMPLE_SENTENCES", "TASKS", "EncoderForExport", "TextSpec", "example_inputs",
           "from_transformers", "is_hf_folder", "is_transformers_model", "load_folder",
           "resolve", "tokenizer_from_folder", "wrap"]
