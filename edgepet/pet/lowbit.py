"""k-bit adapter matrices: Gaussian-optimal codebooks, STE training, packed storage.

After "Revisiting the Parameter Efficiency of Adapters from the Perspective of
Precision Redundancy" (Jin et al., ICCV 2023): each adapter matrix is standardized by
its own mean and standard deviation, rounded to the nearest level of the codebook that
minimizes the squared error for a standard normal variable (Lloyd-Max), and mapped
back. Training sees the rounded matrix in the forward pass and passes gradients
straight through (STE). Stored form: ``bits`` per weight plus two float32 per matrix.

1-bit levels are ``mean +- c * std`` with ``c = sqrt(2 / pi)``; that is the asymmetric
1-bit rule of :mod:`edgepet.quant.tensor`, ``w = s * (q - z)``, with ``s = 2 c std`` and
``z = 1/2 - mean / s``, so a binarized matrix is a :class:`~edgepet.quant.QuantizedTensor`
and the forward pass uses exactly its :meth:`~edgepet.quant.QuantizedTensor.dequantize`.
For 2-4 bits the Gaussian levels are not evenly spaced, so no ``QuantizedTensor`` can
hold them: :meth:`PackedMatrix.dequantized` gives the float weights instead.
"""

from __future__ import annotations

import math
from functools import cache
from itertools import pairwise

import numpy as np
import torch
from torch import nn

from edgepet.quant import QuantizedTensor

ADAPTER_BITS = (1, 2, 3, 4)


def check_adapter_bits(bits: object) -> int:
    """Return ``bits`` as int if it is 1-4, else raise ValueError saying what is allowed."""
    if isinstance(bits, bool) or bits not in ADAPTER_BITS:
        raise ValueError(f"adapter bits={bits!r} is not supported — use 1, 2, 3 or 4 (or None)")
    return int(bits)


@cache
def gaussian_codebook(bits: int) -> tuple[float, ...]:
    """The 2^bits Lloyd-Max levels for N(0, 1), ascending (1 bit: +-sqrt(2/pi))."""
    bits = check_adapter_bits(bits)
    n = 1 << bits

    def pdf(t: float) -> float:
        return 0.0 if math.isinf(t) else math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)

    def cdf(t: float) -> float:
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2)))

    levels = [(-1.0 + (2 * i + 1) / n) * 2.0 for i in range(n)]
    for _ in range(5000):
        edges = [-math.inf, *((a + b) / 2 for a, b in pairwise(levels)), math.inf]
        new = [
            (pdf(lo) - pdf(hi)) / (cdf(hi) - cdf(lo)) for lo, hi in pairwise(edges)
        ]
        done = max(abs(a - b) for a, b in zip(new, levels, strict=True)) < 1e-12
        levels = new
        if done:
            break
    return tuple(levels)


def _codebook_tensors(bits: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    levels = torch.tensor(gaussian_codebook(bits), dtype=like.dtype, device=like.device)
    return levels, (levels[1:] + levels[:-1]) / 2


def gaussian_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (int64 index of the nearest level), mean and std (0-d tensors) of a matrix.

    Kept on ``w``'s device, without host syncs, since it runs in every training step.
    """
    w = w.detach()
    mean, std = w.mean(), w.std(unbiased=False)
    _, edges = _codebook_tensors(bits, w)
    z = (w - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.bucketize(z, edges), mean, std


def gaussian_quantize_ste(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``mean + std * level`` of each weight, with straight-through gradients to ``w``."""
    codes, mean, std = gaussian_codes(w, bits)
    levels, _ = _codebook_tensors(bits, w)
    rounded = mean + std * levels[codes]
    return w + (rounded - w).detach()


class LowBitMatrix(nn.Module):
    """A matrix trained in float but used, forward, as its k-bit Gaussian rounding."""

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = check_adapter_bits(bits)
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return gaussian_quantize_ste(self.weight, self.bits)

    def stored_bytes(self) -> int:
        """Bytes once packed: the codes plus mean and std (float32)."""
        return -(-self.weight.numel() * self.bits // 8) + 8

    def packed(self) -> PackedMatrix:
        """The frozen form: packed codes plus mean and std."""
        codes, mean, std = gaussian_codes(self.weight, self.bits)
        codes = codes.cpu().numpy().astype(np.uint8)
        return PackedMatrix.from_codes(
            codes, self.bits, float(mean), float(std), self.weight.dtype
        )

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, bits={self.bits}"


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    planes = np.unpackbits(codes.reshape(-1, 1), axis=1)[:, 8 - bits:]
    return np.packbits(planes.reshape(-1))


def _unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, int]) -> np.ndarray:
    count = shape[0] * shape[1]
    planes = np.unpackbits(packed)[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (planes * weights).sum(axis=1).astype(np.uint8).reshape(shape)


class PackedMatrix(nn.Module):
    """A frozen k-bit adapter matrix: bit-packed codes plus mean and std.

    Calling it returns the dequantized weights (computed in float32, then cast to the
    dtype the matrix was trained in); nothing in it trains.
    """

    def __init__(
        self,
        packed: np.ndarray,
        bits: int,
        shape: tuple[int, int],
        stats: np.ndarray,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.bits = check_adapter_bits(bits)
        self.dtype = dtype
        self.register_buffer("packed_codes", torch.from_numpy(np.ascontiguousarray(packed)))
        self.register_buffer("shape_", torch.tensor(shape, dtype=torch.int64))
        # mean, std as float32: the two floats the file stores.
        self.register_buffer("stats", torch.from_numpy(stats.astype(np.float32)))

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        bits: int,
        mean: float,
        std: float,
        dtype: torch.dtype = torch.float32,
    ) -> PackedMatrix:
        """Pack ``codes`` (uint8 ``[N, K]``, indices into the codebook) with their stats."""
        stats = np.array([mean, std], dtype=np.float32)
        return cls(_pack_codes(codes, bits), bits, tuple(codes.shape), stats, dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.shape_)  # type: ignore[return-value]

    def codes(self) -> np.ndarray:
        """The unpacked codes, uint8 ``[N, K]``; code i stands for the i-th level."""
        return _unpack_codes(self.packed_codes.cpu().numpy(), self.bits, self.shape)

    def quantized_tensor(self) -> QuantizedTensor:
        """The 1-bit matrix as an asymmetric per-row ``QuantizedTensor`` (same s, z per row).

        Raises ValueError for 2-4 bits, whose Gaussian levels are not evenly spaced.
        """
        if self.bits != 1:
            raise ValueError(
                f"a {self.bits}-bit Gaussian codebook has unevenly spaced levels that no "
                f"QuantizedTensor rule can hold — use dequantized() for its float weights"
            )
        mean, std = (float(v) for v in self.stats.cpu().numpy())
        c = gaussian_codebook(1)[1]
        n, k = self.shape
        s = np.float32(2.0 * c * std)
        if s > 0:
            z = np.float32(0.5 - mean / s)
        else:  # a constant matrix: code 0 at the zero point -mean / s
            s = np.float32(abs(mean) if mean != 0 else 1.0)
            z = np.float32(-mean / s)
        codes = self.codes() if std > 0 else np.zeros((n, k), dtype=np.uint8)
        return QuantizedTensor(
            codes=codes,
            scales=np.full((n, 1), s, dtype=np.float32),
            zero_points=np.full((n, 1), z, dtype=np.float32),
            bits=1,
            group_size=k,
            symmetric=False,
        )

    def dequantized(self) -> np.ndarray:
        """The float32 ``[N, K]`` weights the forward pass uses."""
        if self.bits == 1:
            return self.quantized_tensor().dequantize()
        mean, std = (np.float32(v) for v in self.stats.cpu().numpy())
        levels = np.asarray(gaussian_codebook(self.bits), dtype=np.float32)
        return (mean + std * levels[self.codes()]).astype(np.float32)

    def forward(self) -> torch.Tensor:
        weights = torch.from_numpy(self.dequantized())
        return weights.to(device=self.packed_codes.device, dtype=self.dtype)

    def stored_bytes(self) -> int:
        """Bytes of the packed codes plus mean and std."""
        return self.packed_codes.numel() + 8

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bits={self.bits}"
