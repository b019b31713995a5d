"""Small example models: the demo's default and the exporter's test subjects.

Three shapes of network the exporter must handle, each small enough to export, run
and verify in seconds on two cores, with deterministic weights (a seed, no files):

* :class:`TinyMLP` — linear layers with biases on a flat input;
* :class:`TinyViT` — a ViT-style encoder: patch embedding, pre-norm attention, GELU MLP;
* :class:`TinyLlama` — a Llama-style decoder stack: token embedding, RMSNorm, causal
  attention with rotary position embedding (RoPE), SiLU-gated MLP, LM head.

Each model has ``example_inputs()``, which the exporter uses when no input shape is given.
Widths are deliberately not all multiples of 32, so that tails in K and N are exercised.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _init_(module: nn.Module, seed: int) -> None:
    """Deterministic, trained-looking scale: N(0, 1/fan_in) weights, small biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


class TinyMLP(nn.Module):
    """``in_features -> hidden -> hidden -> classes`` with GELU."""

    def __init__(self, in_features: int = 96, hidden: int = 200, classes: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        _init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.randn(4, self.fc1.in_features, generator=torch.Generator().manual_seed(1)),)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores + mask
        out = torch.softmax(scores, dim=-1) @ v
        b, h, t, hd = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * hd))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        a = self.attn
        x = x + a.attend(a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h)), None)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A ViT-style image classifier: 8x8 patches of a 3x32x32 image, 2 encoder blocks."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp: int = 176, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.image = image
        self.patch = patch
        self.patch_embed = nn.Linear(3 * patch * patch, dim)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(_EncoderBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        _init_(self, seed)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed + 1)
            self.pos.copy_(0.1 * torch.randn(self.pos.shape, generator=gen))
            self.cls.copy_(0.1 * torch.randn(self.cls.shape, generator=gen))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.patch_embed(patches.reshape(b, (h // p) * (w // p), c * p * p))
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1)
        return (torch.randn(2, 3, self.image, self.image, generator=gen),)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class _DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.input_norm = _RMSNorm(dim)
        self.attn = _Attention(dim, heads, bias=False)
        self.post_norm = _RMSNorm(dim)
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        h = self.input_norm(x)
        a = self.attn
        q, k, v = a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        x = x + a.attend(q, k, v, mask)
        h = self.post_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyLlama(nn.Module):
    """A Llama-style decoder: token ids ``[B, T]`` -> next-token logits ``[B, T, vocab]``."""

    def __init__(self, vocab: int = 256, dim: int = 96, depth: int = 2, heads: int = 4,
                 ffn: int = 232, max_len: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_DecoderBlock(dim, heads, ffn) for _ in range(depth))
        self.norm = _RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        head_dim = dim // heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        causal = torch.full((max_len, max_len), float("-inf")).triu(1)
        self.register_buffer("causal", causal, persistent=False)
        _init_(self, seed)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, dim, generator=torch.Generator()
                                                .manual_seed(seed + 1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed(input_ids)
        cos, sin, mask = self.cos[:t], self.sin[:t], self.causal[:t, :t]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1)
        return (torch.randint(0, self.vocab, (2, 16), generator=gen),)


EXAMPLES: dict[str, type[nn.Module]] = {
    "mlp": TinyMLP,
    "vit": TinyViT,
    "llama": TinyLlama,
}

def random_lowbit_tasks(
    tuned: nn.Module, seeds: dict[str, int], scale: float = 0.05
) -> dict[str, nn.Module]:
    """Task models for adapter-switching tests and benchmarks: per task, a copy of
    ``tuned`` (which carries k-bit LoRA) with random, trained-looking LoRA matrices
    (``scale`` times a normal draw from the task's seed), binarized and in eval mode."""
    import copy

    from edgepet import pet

    tasks = {}
    for name, seed in seeds.items():
        model = copy.deepcopy(tuned)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_" in key:
                    p.copy_(scale * torch.randn(p.shape, generator=gen))
        pet.binarize(model)
        tasks[name] = model.eval()
    return tasks


__all__ = ["EXAMPLES", "TinyLlama", "TinyMLP", "TinyViT", "random_lowbit_tasks"]
