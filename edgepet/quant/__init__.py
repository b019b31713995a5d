"""Weight quantization: codes, scales and the one code -> value rule."""

from edgepet.quant.rtn import quantize
from edgepet.quant.tensor import (
    GROUP_MULTIPLE,
    SUPPORTED_BITS,
    QuantizedTensor,
    storage_bits,
)

__all__ = ["GROUP_MULTIPLE", "SUPPORTED_BITS", "QuantizedTensor", "quantize", "storage_bits"]
