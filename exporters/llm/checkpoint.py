"""Reading Llama-family checkpoints: a GGUF file or a Hugging Face folder, one result.

Both sources become a :class:`Checkpoint`: the architecture (:class:`LlamaConfig`),
float32 weights under Hugging Face names and in Hugging Face layout, the tokenizer as a
``tokenizers`` JSON document, the chat template and the generation settings. Everything
after loading (graph, quantization, bundle) sees only that.

GGUF specifics handled here:

* quantized tensors (Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantized with the ``gguf``
  package's own reference dequantizers;
* llama.cpp's converter permutes the rows of ``q_proj``/``k_proj`` so that RoPE can rotate
  adjacent pairs; the permutation is undone so that the rotate-half RoPE of Hugging Face
  (and of the graph) applies;
* the GPT-2 style BPE vocabulary (tokens, merges, token types) becomes a tokenizer.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepet.runtime.errors import BadInputError

#: GGUF architectures read here (all are Llama-shaped decoders).
GGUF_ARCHITECTURES = ("llama",)
#: Hugging Face ``model_type`` values read here.
HF_MODEL_TYPES = ("llama",)


@dataclass
class LlamaConfig:
    """The shape of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``decoder.config``)."""
        return asdict(self)


@dataclass
class Checkpoint:
    """A loaded decoder: config, float weights (HF names/layout), tokenizer and chat."""

    config: LlamaConfig
    weights: dict[str, np.ndarray]
    tokenizer_json: dict[str, Any]
    chat_template: str | None
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos_token: bool
    source: str
    source_kind: str  # "gguf" or "huggingface"
    name: str = "llama"
    source_quantization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, i: int, part: str) -> np.ndarray:
        """Weight ``model.layers.{i}.{part}.weight``."""
        return self.weights[f"model.layers.{i}.{part}.weight"]

    @property
    def embedding(self) -> np.ndarray:
        return self.weights["model.embed_tokens.weight"]

    @property
    def head(self) -> np.ndarray:
        return self.weights.get("lm_head.weight", self.embedding)


def is_llm_source(path: Any) -> bool:
    """True for a ``.gguf`` file or a Hugging Face folder of a Llama-family model."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            data = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return False
        return isinstance(data, dict) and "model_type" in data and "num_hidden_layers" in data
    return False


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a GGUF file or a Hugging Face folder into a :class:`Checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path} does not exist — give a .gguf file or a Hugging Face "
                            "model folder (config.json, *.safetensors, tokenizer.json)")
    if path.is_dir():
        return _load_hf(path)
    return _load_gguf(path)


# --- GGUF ---------------------------------------------------------------------------------


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise BadInputError("reading GGUF files needs the gguf package — pip install "
                            "'edgepet[llm]'") from None
    return gguf


def _load_gguf(path: Path) -> Checkpoint:
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # noqa: BLE001 — gguf raises plain ValueError/struct errors
        raise BadInputError(f"{path} is not a readable GGUF file ({type(error).__name__}: "
                            f"{error}) — it may be truncated or not GGUF; download it again"
                            ) from None
    meta = _GGUFMeta(reader, path)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise BadInputError(f"{path}: GGUF architecture {arch!r} is not supported — edgepet "
                            f"reads {', '.join(GGUF_ARCHITECTURES)} (Llama-family) models")
    hidden = int(meta.need(f"{arch}.embedding_length"))
    heads = int(meta.need(f"{arch}.attention.head_count"))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    tokens = meta.need("tokenizer.ggml.tokens")
    weights = _gguf_weights(reader, path, gguf)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=int(meta.need(f"{arch}.feed_forward_length")),
        num_layers=int(meta.need(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_float32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_float32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings="lm_head.weight" not in weights,
    )
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise BadInputError(f"{path}: RoPE scaling {meta.get(f'{arch}.rope.scaling.type')!r} "
                            "is not supported yet — edgepet runs plain RoPE")
    for i in range(config.num_layers):
        for part, n_heads in (("self_attn.q_proj", heads), ("self_attn.k_proj", kv_heads)):
            key = f"model.layers.{i}.{part}.weight"
            weights[key] = unpermute_rope_rows(weights[key], n_heads)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and int(eot) not in eos_ids:
        eos_ids.append(int(eot))
    bos = meta.get("tokenizer.ggml.bos_token_id")
    checkpoint = Checkpoint(
        config=config,
        weights=weights,
        tokenizer_json=gguf_tokenizer_json(meta, path),
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        source=str(path),
        source_kind="gguf",
        name=str(meta.get("general.name", path.stem)),
        source_quantization=_file_type(reader, gguf),
    )
    _check_shapes(checkpoint, path)
    return checkpoint


def _float32(value: float) -> float:
    """A float GGUF stored in 32 bits, as the decimal it was written from (1e-05, not
    9.999999747e-06)."""
    return float(f"{float(value):.7g}")


class _GGUFMeta:
    """GGUF key/value metadata as Python values."""

    def __init__(self, reader: Any, path: Path) -> None:
        self.fields = reader.fields
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        field_ = self.fields.get(key)
        if field_ is None:
            return default
        return _field_value(field_)

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise BadInputError(f"{self.path}: GGUF metadata {key!r} is missing — the file is "
                                "not a complete Llama-family model")
        return value


def _field_value(field_: Any) -> Any:
    import gguf

    types = list(field_.types)
    if not types:
        return None

    def scalar(part: np.ndarray, kind: Any) -> Any:
        if kind == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        value = part.tolist()
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    if types[0] == gguf.GGUFValueType.ARRAY:
        kind = types[1] if len(types) > 1 else None
        return [scalar(field_.parts[i], kind) for i in field_.data]
    return scalar(field_.parts[field_.data[0]], types[0])


#: GGUF tensor names -> Hugging Face names (``{i}`` is the layer index).
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name.startswith("blk."):
        _, index, rest = gguf_name.split(".", 2)
        pattern = _GGUF_NAMES.get(f"blk.{{i}}.{rest}")
        return None if pattern is None else pattern.format(i=index)
    return _GGUF_NAMES.get(gguf_name)


def _gguf_weights(reader: Any, path: Path, gguf: Any) -> dict[str, np.ndarray]:
    from gguf import quants

    weights = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: not used by plain RoPE
        qtype = tensor.tensor_type
        # gguf lists shapes innermost first; numpy wants [rows, columns].
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))
        try:
            value = quants.dequantize(np.asarray(tensor.data), qtype)
        except NotImplementedError:
            raise BadInputError(f"{path}: tensor {tensor.name} is stored as "
                                f"{qtype.name}, which the gguf package cannot dequantize — "
                                "requantize the file to Q8_0, Q4_0, Q4_1, a K-quant or F16"
                                ) from None
        except (ValueError, IndexError) as error:
            raise BadInputError(f"{path}: tensor {tensor.name} cannot be read ({error}) — "
                                "the file may be truncated; download it again") from None
        weights[name] = np.ascontiguousarray(value.reshape(shape), dtype=np.float32)
    return weights


def _file_type(reader: Any, gguf: Any) -> str | None:
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        if tensor.name.endswith("attn_q.weight"):
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return max(counts, key=counts.get) if counts else None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (adjacent-pair RoPE -> rotate-half RoPE).

    llama.cpp's converter turns each head's rows ``[x0..x(d/2-1), y0..y(d/2-1)]`` into
    ``[x0, y0, x1, y1, ...]``; this puts them back.
    """
    rows, cols = w.shape
    half = rows // n_heads // 2
    return np.ascontiguousarray(
        w.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols))


#: llama.cpp pre-tokenizer names -> tokenizers pre-tokenizer documents.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "gpt-2": _BYTE_LEVEL,
    "gpt2": _BYTE_LEVEL,
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated",
         "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]},
}
#: GGUF token types that are special (matched whole, never split): control, user-defined.
_CONTROL, _USER_DEFINED = 3, 4


def gguf_tokenizer_json(meta: _GGUFMeta, path: Path) -> dict[str, Any]:
    """A ``tokenizers`` JSON document for a GGUF's GPT-2 style BPE vocabulary."""
    model = meta.need("tokenizer.ggml.model")
    if model != "gpt2":
        raise BadInputError(f"{path}: tokenizer model {model!r} is not supported — edgepet "
                            "reads byte-level BPE (gpt2) vocabularies; export from the Hugging "
                            "Face folder instead")
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise BadInputError(f"{path}: pre-tokenizer {pre!r} is not supported (known: "
                            f"{', '.join(sorted(_PRE_TOKENIZERS))}) — export from the Hugging "
                            "Face folder instead")
    tokens = meta.need("tokenizer.ggml.tokens")
    merges = meta.need("tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": kind == _CONTROL}
        for i, (tok, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZERS[pre],
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)},
                  "merges": list(merges)},
    }


# --- Hugging Face folder ------------------------------------------------------------------


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInputError(f"{file} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{file} does not hold a JSON object")
    return data


def _load_hf(folder: Path) -> Checkpoint:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BadInputError(f"{folder} has no config.json — give a Hugging Face model folder "
                            "or a .gguf file")
    cfg = _read_json(config_file)
    if cfg.get("model_type") not in HF_MODEL_TYPES:
        raise BadInputError(f"{folder}: model_type {cfg.get('model_type')!r} is not supported "
                            f"— edgepet reads {', '.join(HF_MODEL_TYPES)} (Llama-family) models")
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise BadInputError(f"{folder} has no tokenizer.json — save the tokenizer with "
                            "tokenizer.save_pretrained(folder) (a fast tokenizer)")
    if cfg.get("rope_scaling"):
        raise BadInputError(f"{folder}: rope_scaling {cfg['rope_scaling']!r} is not supported "
                            "yet — edgepet runs plain RoPE")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    config = LlamaConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    weights = _safetensors_weights(folder)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    tok_config = folder / "tokenizer_config.json"
    tok_cfg = _read_json(tok_config) if tok_config.is_file() else {}
    gen_file = folder / "generation_config.json"
    gen = _read_json(gen_file) if gen_file.is_file() else {}
    tokenizer_json = _read_json(tokenizer_file)
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    checkpoint = Checkpoint(
        config=config,
        weights=weights,
        tokenizer_json=tokenizer_json,
        chat_template=tok_cfg.get("chat_template") if isinstance(
            tok_cfg.get("chat_template"), str) else None,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        add_bos_token=bool(tok_cfg.get("add_bos_token", False)),
        source=str(folder),
        source_kind="huggingface",
        name=str(cfg.get("_name_or_path") or folder.name),
    )
    _check_shapes(checkpoint, folder)
    return checkpoint


def _safetensors_weights(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadInputError(f"{folder} has no *.safetensors weights — save the model with "
                            "model.save_pretrained(folder, safe_serialization=True)")
    try:
        from safetensors import safe_open
    except ImportError:
        raise BadInputError("reading safetensors needs the safetensors package — pip "
                            "install 'edgepet[llm]'") from None
    weights = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 — safe_open has no __iter__
                    weights[key] = f.get_tensor(key).float().numpy()
        except Exception as error:  # noqa: BLE001 — safetensors raises its own types
            raise BadInputError(f"{file} cannot be read ({error}) — it may be truncated"
                                ) from None
    return weights


def _check_shapes(ck: Checkpoint, where: Path) -> None:
    c = ck.config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    expected: dict[str, tuple[int, int]] = {
        "model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
        "model.norm.weight": (c.hidden_size,),  # type: ignore[dict-item]
    }
    if not c.tie_word_embeddings:
        expected["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    parts: dict[str, tuple[int, ...]] = {
        "input_layernorm": (c.hidden_size,), "post_attention_layernorm": (c.hidden_size,),
        "self_attn.q_proj": (q, c.hidden_size), "self_attn.k_proj": (kv, c.hidden_size),
        "self_attn.v_proj": (kv, c.hidden_size), "self_attn.o_proj": (c.hidden_size, q),
        "mlp.gate_proj": (c.intermediate_size, c.hidden_size),
        "mlp.up_proj": (c.intermediate_size, c.hidden_size),
        "mlp.down_proj": (c.hidden_size, c.intermediate_size),
    }
    for i in range(c.num_layers):
        for part, shape in parts.items():
            expected[f"model.layers.{i}.{part}.weight"] = shape  # type: ignore[assignment]
    for name, shape in expected.items():
        if name not in ck.weights:
            raise BadInputError(f"{where}: weight {name} is missing — the checkpoint is "
                                "incomplete or not a Llama-family decoder")
        if tuple(ck.weights[name].shape) != tuple(shape):
            raise BadInputError(f"{where}: weight {name} has shape "
                                f"{tuple(ck.weights[name].shape)}, expected {tuple(shape)}")
        if ck.weights[name].ndim == 2:
            ck.weights[name] = np.ascontiguousarray(ck.weights[name], dtype=np.float32)

__all__ = [
    "Checkpoint",
    "LlamaConfig",
    "gguf_tokenizer_json",
    "is_llm_source",
    "load_checkpoint",
    "unpermute_rope_rows",
]
