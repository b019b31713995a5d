"""Weight quantization: codes, scales and the one code -> value rule."""

from edgepet.quant.rtn import quantize
from edgepet.quant.tensor import (
    GROUP_MULTIPLE,
    SUPPORTED_BITS,
    ZERO_LEVEL_BITS,
    QuantizedTensor,
    storage_bits,
)

__all__ = ["GROUP_MULTIPLE", "SUPPORTED_BITS", "ZERO_LEVEL_BITS", "QuantizedTensor", "quantize",
           "storage_bits"]

# Issue 3: error-minimizing search and whole-model quantization (torch imported lazily);
# issue 10: calibrated quantization (GPTQ) for decoder exports.
from edgepet.quant.gptq import gptq_quantize, hessian
from edgepet.quant.model import (
    LayerReport,
    QuantizedModel,
    output_head,
    quantize_model,
    select_linear_layers,
)
from edgepet.quant.search import QuantError, quantization_error, search_quantize

__all__ += [
    "LayerReport",
    "QuantError",
    "QuantizedModel",
    "output_head",
    "quantization_error",
    "quantize_model",
    "search_quantize",
    "select_linear_layers",
    "gptq_quantize",
    "hessian",
]
