"""ONNX graph pieces for ``ai.edgepet.LutMatMul``: the node and one-node models.

The operator contract is in docs/operator.md; :func:`lut_matmul_node` is its one
writer, so every exporter emits the same attributes and input order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepet.kernels import LAYOUT, pack, scales_tiled
from edgepet.quant.tensor import QuantizedTensor
from edgepet.runtime.operator import DOMAIN, OP_TYPE, OP_VERSION

#: The ONNX opset the exporters target for the standard domain.
ONNX_OPSET = 17


def lut_matmul_node(
    qt: QuantizedTensor,
    input_name: str,
    output_name: str,
    name: str,
    bias: np.ndarray | None = None,
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """One ``LutMatMul`` node computing ``input @ dequant(qt).T (+ bias)``.

    Returns the node and the initializers it reads (named after ``name``).
    """
    n, k = qt.shape
    scales, zeros = scales_tiled(qt)
    inits = [
        numpy_helper.from_array(pack(qt), f"{name}.weight_packed"),
        numpy_helper.from_array(scales, f"{name}.scales"),
    ]
    inputs = [input_name, inits[0].name, inits[1].name]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zeros, f"{name}.zero_points"))
        inputs.append(inits[-1].name)
    else:
        inputs.append("")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape != (n,):
            raise ValueError(f"{name}: bias has shape {bias.shape}, expected ({n},)")
        inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
        inputs.append(inits[-1].name)
    while inputs[-1] == "":
        inputs.pop()
    # zero_level (op ABI 6) only where set: other nodes read as before by older libraries.
    zero_level = {"zero_level": 1} if qt.zero_level else {}
    node = helper.make_node(
        OP_TYPE,
        inputs,
        [output_name],
        name=name,
        domain=DOMAIN,
        K=k,
        N=n,
        bits=qt.storage_bits,
        ternary=int(qt.bits == "ternary"),
        group_size=qt.group_size,
        symmetric=int(qt.symmetric),
        layout=LAYOUT,
        **zero_level,
    )
    return node, inits


def linear_model(qt: QuantizedTensor, bias: np.ndarray | None = None) -> onnx.ModelProto:
    """A model of one ``LutMatMul``: input ``x`` float32 ``[M, K]`` -> ``y`` ``[M, N]``."""
    n, k = qt.shape
    node, inits = lut_matmul_node(qt, "x", "y", "linear", bias)
    graph = helper.make_graph(
        [node],
        "edgepet_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(DOMAIN, OP_VERSION),
        ],
        producer_name="edgepet",
    )
