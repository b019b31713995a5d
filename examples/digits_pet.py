"""PET on real data: scikit-learn's handwritten digits, one pretraining task, then more.

A small transformer reads each 8x8 digit as 8 row tokens. It is pretrained on upright
digits, then adapted to rotated digits (same ten labels, new input statistics) with full
fine-tuning and with each PET method of ``edgepet.pet``; the table gives accuracy on the
new task and the bytes that must be stored for it (for full fine-tuning: a whole model;
for PET: the update alone, packed codes for the 1-bit adapter). The "4-bit base" column
is the accuracy once every linear layer but the head is quantized to 4 bits
(``edgepet.quant.quantize_model``, error search on calibration data) -- merged methods
fold their update in first, the others keep it beside the quantized base.

Then a task sequence (rotated -> inverted -> mirrored): one adapter trained on each task
in turn forgets the earlier ones; LAE's online/offline pair remembers them better.

Run: ``python examples/digits_pet.py`` (about three minutes on one core);
``--quick`` runs a few epochs of everything, as the test does.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgepet import pet
from edgepet.quant import quantize_model

# --- data -------------------------------------------------------------------------------

TASKS = {
    "upright": lambda img: img,
    "rotated": lambda img: np.rot90(img, 1, axes=(1, 2)),
    "inverted": lambda img: 1.0 - img,
    "mirrored": lambda img: img[:, :, ::-1],
}


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_tasks() -> dict[str, Split]:
    """Each task: the same digits under one transform, a fixed 75/25 split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.25, random_state=0, stratify=digits.target
    )
    tasks = {}
    for name, transform in TASKS.items():
        x = torch.from_numpy(np.ascontiguousarray(transform(images)))
        y = torch.from_numpy(digits.target).long()
        tasks[name] = Split(x[idx_train], y[idx_train], x[idx_test], y[idx_test])
    return tasks


# --- model ------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block with plain linear layers (so PET can wrap each)."""

    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        att = nn.functional.scaled_dot_product_attention(
            self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        )
        x = x + self.o(att.transpose(1, 2).flatten(-2))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class DigitTransformer(nn.Module):
    """8 row tokens of 8 pixels -> 2 transformer blocks -> mean pool -> 10 classes."""

    def __init__(self, d: int = 32, heads: int = 2, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(8, d) * 0.1)
        self.blocks = nn.Sequential(*(Block(d, heads, hidden) for _ in range(layers)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(h).mean(dim=1))


# --- training ---------------------------------------------------------------------------


def train(model: nn.Module, split: Split, epochs: int, lr: float, lae: pet.LAE | None = None,
          seed: int = 0) -> None:
    """Adam on cross-entropy over the trainable parameters; LAE accumulates each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(split.y_train)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(split.x_train[batch]), split.y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if lae is not None:
                lae.accumulate()
    model.eval()


@torch.no_grad()
def accuracy(predict, split: Split) -> float:
    return (predict(split.x_test).argmax(-1) == split.y_test).float().mean().item() * 100


def float_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def four_bit_accuracy(model: nn.Module, split: Split) -> float:
    """Accuracy with every linear layer but the head at 4 bits (merged where possible)."""
    model = copy.deepcopy(model)
    if pet.pet_layers(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # adapters that cannot merge stay beside the base
            pet.merge(model)
    calibration = [split.x_train[:256]]
    quantize_model(model, bits=4, group_size=32, method="search",
                   calibration=calibration).apply_to(model)
    return accuracy(model, split)


# --- the experiments --------------------------------------------------------------------

#: name -> (method, settings); None means full fine-tuning. Adapters without biases, so
#: their bytes are the matrices alone (biases would stay float32).
ADAPTATIONS: dict[str, tuple[str | None, dict]] = {
    "full fine-tuning": (None, {}),
    "LoRA r=4": ("lora", {"r": 4, "alpha": 8}),
    "Bone (MiSS) r=4": ("bone", {"r": 4}),
    "Bone-bat r=4": ("bone-bat", {"r": 4}),
    "adapter r=8 fp32": ("adapter", {"r": 8, "bias": False}),
    "adapter r=8 1-bit": ("adapter", {"r": 8, "bias": False, "bits": 1}),
    "adapter r=8 2-bit": ("adapter", {"r": 8, "bias": False, "bits": 2}),
    "adapter r=32 1-bit": ("adapter", {"r": 32, "bias": False, "bits": 1}),
    "VL-PET gated adapter r=8": ("gating", {"r": 8, "bias": False, "granularity": "large"}),
}

#: learning rates: full fine-tuning moves every weight, PET only small ones.
LR_FULL, LR_PET = 1e-3, 5e-3
SEQUENCE = ["rotated", "inverted", "mirrored"]


def pretrain(tasks: dict[str, Split], epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = DigitTransformer()
    train(model, tasks["upright"], epochs, 3e-3)
    return model


def adapt(base: nn.Module, split: Split, method: str | None, config: dict, epochs: int,
          seed: int = 0):
    """Tune a copy of ``base`` on ``split``; return it and the bytes its task needs."""
    torch.manual_seed(seed + 1)
    model = copy.deepcopy(base)
    if method is None:
        train(model, split, epochs, LR_FULL, seed=seed)
        return model, float_bytes(model)
    pet.apply(model, method, "all-linear", **config)
    train(model, split, epochs, LR_PET, seed=seed)
    if config.get("bits"):
        return model, pet.binarize(model).total
    return model, pet.stored_bytes(model).total


def run_adaptation(tasks, base, epochs: int, seeds: int) -> list[tuple]:
    """Rows: name, [rotated acc], [upright acc], [rotated acc at 4-bit base], bytes."""
    new, old = tasks["rotated"], tasks["upright"]
    rows = [("pretrained only", [accuracy(base, new)], [accuracy(base, old)],
             [four_bit_accuracy(base, new)], 0)]
    for name, (method, config) in ADAPTATIONS.items():
        acc_new, acc_old, acc_q = [], [], []
        for seed in range(seeds):
            model, nbytes = adapt(base, new, method, config, epochs, seed)
            acc_new.append(accuracy(model, new))
            acc_old.append(accuracy(model, old))
            acc_q.append(four_bit_accuracy(model, new))
        rows.append((name, acc_new, acc_old, acc_q, nbytes))
    return rows


def run_sequence(tasks, base, epochs: int, ema_decay: float) -> list[tuple]:
    """Rows: name, accuracy on each task after the last one, bytes for all tasks."""
    config = {"r": 8, "bias": False}
    rows = []

    torch.manual_seed(1)
    seq = copy.deepcopy(base)
    pet.apply(seq, "adapter", **config)
    for task in SEQUENCE:
        train(seq, tasks[task], epochs, LR_PET)
    per_task = [accuracy(seq, tasks[t]) for t in SEQUENCE]
    rows.append(("adapter, tasks one after another", per_task, pet.stored_bytes(seq).total))

    torch.manual_seed(1)
    model = copy.deepcopy(base)
    lae = pet.LAE(model, "adapter", ema_decay=ema_decay, **config)
    for task in SEQUENCE:
        train(model, tasks[task], epochs, LR_PET, lae=lae)
    per_task = [accuracy(lae, tasks[t]) for t in SEQUENCE]
    rows.append((f"LAE, ema_decay={ema_decay} (online + offline adapter)", per_task,
                 2 * pet.stored_bytes(model).total))

    # References that are not continual learning:
    joint = Split(torch.cat([tasks[t].x_train for t in SEQUENCE]),
                  torch.cat([tasks[t].y_train for t in SEQUENCE]), None, None)
    model, nbytes = adapt(base, joint, "adapter", config, epochs)
    rows.append(("reference: one adapter, all tasks at once", [accuracy(model, tasks[t])
                 for t in SEQUENCE], nbytes))
    per_task, total = [], 0
    for task in SEQUENCE:
        model, nbytes = adapt(base, tasks[task], "adapter", config, epochs)
        per_task.append(accuracy(model, tasks[task]))
        total += nbytes
    rows.append(("reference: one adapter per task (task known)", per_task, total))
    return rows


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def print_tables(adaptation, sequence, seeds: int) -> None:
    print(f"\nPretrained on upright digits, adapted to rotated digits (accuracy %: mean ± sd "
          f"over {seeds} seed{'s' if seeds > 1 else ''} of the adaptation)")
    print("| method | rotated | upright (forgetting) | rotated, 4-bit base | stored bytes |")
    print("|---|---:|---:|---:|---:|")
    for name, acc_new, acc_old, acc_q, nbytes in adaptation:
        print(f"| {name} | {_cell(acc_new)} | {_cell(acc_old)} | {_cell(acc_q)} | {nbytes:,} |")
    print("\nTask sequence " + " -> ".join(SEQUENCE) + " (accuracy % after the last task)")
    print("| method | " + " | ".join(SEQUENCE) + " | mean | stored bytes (all tasks) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, per_task, nbytes in sequence:
        cells = " | ".join(f"{a:.1f}" for a in per_task)
        print(f"| {name} | {cells} | {np.mean(per_task):.1f} | {nbytes:,} |")


def main(quick: bool = False) -> tuple[list, list]:
    """Run both experiments and print their tables; returns the rows."""
    torch.set_num_threads(1)  # this model is tiny: one thread is fastest
    start = time.time()
    tasks = load_tasks()
    epochs, seeds = (3, 1) if quick else (40, 3)
    base = pretrain(tasks, epochs)
    adaptation = run_adaptation(tasks, base, epochs, seeds)
    sequence = run_sequence(tasks, base, 2 if quick else 15, ema_decay=0.998)
    print_tables(adaptation, sequence, seeds)
    print(f"\n({time.time() - start:.0f} s)")
    return adaptation, sequence


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs only")
    main(parser.parse_args().quick)
