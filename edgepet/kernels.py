"""The native LUT kernels from Python: packing and ``lut_matmul``.

``pack`` writes a :class:`~edgepet.quant.QuantizedTensor` in the layout the
kernels (and the ``ai.edgepet.LutMatMul`` operator) read; ``lut_matmul`` runs the
product in this process, with edgepet's own thread pool.
"""

from __future__ import annotations

import numpy as np

from edgepet import _native
from edgepet.quant.tensor import SCALE_DTYPE, QuantizedTensor

#: The packed layout every kernel of this version reads (see docs/operator.md).
LAYOUT = _native.LAYOUT


def pack(qt: QuantizedTensor) -> np.ndarray:
    """Pack the codes of ``qt`` into the kernel layout: a 1-D uint8 buffer."""
    return _native.pack(qt.codes, qt.storage_bits)


#: Output rows per tile of the packed layout; scales are stored per tile.
TILE_ROWS = 32


def _tiled(values: np.ndarray) -> np.ndarray:
    """[N, G] -> fp16 [ceil(N/32), G, 32], rows past N zero (exact: fp16 values)."""
    n, g = values.shape
    tiles = -(-n // TILE_ROWS)
    padded = np.zeros((tiles * TILE_ROWS, g), SCALE_DTYPE)
    padded[:n] = values
    return np.ascontiguousarray(padded.reshape(tiles, TILE_ROWS, g).transpose(0, 2, 1))


def scales_tiled(qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (and zero points) as the kernels read them: fp16, tile-major
    ``[ceil(N/32), G, 32]`` -- one tile's values contiguous (docs/operator.md).

    Exact: a ``QuantizedTensor``'s scales are fp16 values already.
    """
    zeros = None if qt.zero_points is None else _tiled(qt.zero_points)
    return _tiled(qt.scales), zeros


def _kernel_inputs(qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Packed codes and group-major scales of ``qt``, made once per tensor.

    Packing costs far more than one product (33 ms against 0.1 ms for 4096 x 4096);
    a ``QuantizedTensor`` is immutable, so the result is kept on it.
    """
    cached = qt.__dict__.get("_kernel_inputs")
    if cached is None:
        cached = (pack(qt), *scales_tiled(qt))
        object.__setattr__(qt, "_kernel_inputs", cached)
    return cached


def lut_matmul(
    x: np.ndarray,
    qt: QuantizedTensor,
    bias: np.ndarray | None = None,
    threads: int | None = None,
    kernel: str = "auto",
) -> np.ndarray:
    """``x @ qt.dequantize().T (+ bias)`` through the LUT kernels.

    Args:
        x: float32 ``[..., K]``.
        qt: the quantized weight ``[N, K]``.
        bias: optional float32 ``[N]``.
        threads: worker threads (None: all cores).
        kernel: "auto" (best for this CPU) or one of :func:`available_kernels`
            ("avx512", "avx2", "neon", "reference").

    The result differs from the exact product by the int8 rounding of the
    activation tables (1-3 bits, ternary) or of the activations themselves (4 bits,
    computed by int8 dot products): 0.5-0.9 % relative on Gaussian data
    (docs/operator.md).
    """
    n, k = qt.shape
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x has shape {x.shape}; its last dimension must be K={k}")
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        if bias.shape != (n,):
            raise ValueError(f"bias has shape {bias.shape}, expected ({n},)")
    packed, scales, zeros = _kernel_inputs(qt)
    lead = x.shape[:-1]
    a = np.ascontiguousarray(x.reshape(-1, k))
    y = _native.lut_matmul(
        a,
        packed,
        scales.view(np.uint16),
        None if zeros is None else zeros.view(np.uint16),
        bias,
        n,
        qt.storage_bits,
        qt.bits == "ternary",
        qt.group_size,
        0 if threads is None else int(threads),
        kernel,
        qt.zero_level,
    )
    return y.reshape(*lead, n)


def packed_bits_per_weight(qt: QuantizedTensor) -> float:
    """Bits a kernel reads per weight of ``qt``: packed codes and fp16 scales and zero
    points, with the layout's padding (N to 32 rows, K to 8 inputs)."""
    n, k = qt.shape
    scale_bytes = sum(a.nbytes for a in scales_tiled(qt) if a is not None)
    return 8.0 * (_native.packed_bytes(n, k, qt.storage_bits) + scale_bytes) / (n * k)


def available_kernels() -> list[str]:
    """Kernels this CPU can run, best first."""
    return list(_native.available_kernels())


#: How far ahead (bytes) the bandwidth probe asks for lines; 0: the hardware prefetcher alone.
_PROBE_PREFETCH_BYTES = (0, 2048, 8192)


def read_bandwidth(threads: int, nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """This machine's read bandwidth in GB/s with ``threads`` threads: the fastest of
    ``repeats`` passes over a buffer far larger than the caches, with and without software
    prefetch (some cores reach their bandwidth only with it, as the kernels' streams do)."""
    if threads < 1:
        raise ValueError("threads must be >= 1")
    buffer = np.ones(nbytes, np.uint8)  # written once, so the pages exist
    best = min(_native.read_seconds(buffer, threads, ahead)
               for ahead in _PROBE_PREFETCH_BYTES for _ in range(repeats))
    return nbytes / best / 1e9
