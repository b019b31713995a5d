"""Export, run and verify the three model shapes at 4, 2 and ternary bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepet.exporters import examples
from edgepet.exporters.pipeline import TOLERANCE_VS_PYTORCH, TOLERANCE_VS_QUANTIZED
from edgepet.runtime.bundle import relative_error

BITS = [4, 2, "ternary"]


@pytest.mark.parametrize("bits", BITS, ids=str)
@pytest.mark.parametrize("name", ["mlp", "vit", "llama"])
def test_bundle_output_matches_pytorch_within_the_bit_width_tolerance(bundles, name, bits):
    bundle = bundles.example(name, bits)
    model = examples.EXAMPLES[name]().eval()
    inputs = bundle.reference_inputs()
    with torch.no_grad():
        expected = model(*[torch.from_numpy(v) for v in inputs.values()]).numpy()
    got = bundle.session().run(inputs)["output"]
    assert got.shape == expected.shape
    error = relative_error([got], [expected])
    assert error <= TOLERANCE_VS_PYTORCH[bits], f"{name} {bits}-bit: {error:.3f}"
    _, dequantized = bundle.reference_outputs()
    kernel_error = relative_error([got], [dequantized["output"]])
    assert kernel_error <= TOLERANCE_VS_QUANTIZED, f"{name} {bits}: kernels {kernel_error:.4f}"
    assert all(r.ok for r in bundle.verify())


@pytest.mark.parametrize("name", ["mlp", "vit", "llama"])
def test_every_linear_layer_becomes_lutmatmul_with_its_pytorch_name(bundles, name):
    import onnx

    bundle = bundles.example(name, 4)
    model = examples.EXAMPLES[name]()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {layer["name"] for layer in bundle.layers} == linears
    graph = onnx.load(str(bundle.model_path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    # Projections that read one input (Q/K/V) share one fused node (exporters/fuse.py).
    lut_nodes = {n.name for n in graph.node if n.op_type == "LutMatMul"}
    assert {layer["node"] for layer in bundle.layers} == lut_nodes
    assert "Gemm" not in ops
    assert all(n.domain == "ai.edgepet" for n in graph.node if n.op_type == "LutMatMul")


def test_dequantized_graph_equals_pytorch_running_the_same_codes(bundles):
    """The rewrite is exact: only the codes and the kernels' tables differ from PyTorch."""
    from edgepet.quant import quantize

    bundle = bundles.example("mlp", 2, quantizer="rtn")
    model = examples.TinyMLP().eval()
    with torch.no_grad():
        for layer in bundle.layers:
            linear = model.get_submodule(layer["name"])
            qt = quantize(linear.weight.numpy(), 2, layer["group_size"], True)
            linear.weight.copy_(torch.from_numpy(qt.dequantize()))
        x = bundle.reference_inputs()["x"]
        expected = model(torch.from_numpy(x)).numpy()
    _, dequantized = bundle.reference_outputs()
    np.testing.assert_allclose(dequantized["output"], expected, rtol=1e-4, atol=1e-5)


def test_batch_size_is_dynamic(bundles):
    bundle = bundles.example("mlp", 4)
    session = bundle.session()
    x = np.random.default_rng(0).standard_normal((7, 96)).astype(np.float32)
    assert session.run({"x": x})["output"].shape == (7, 10)


class _TwoInTwoOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 32)
        self.b = torch.nn.Linear(48, 32)

    def forward(self, x, z):
        h = self.a(x) + self.b(z)
        return h.relu(), h.sum(-1)


def test_several_inputs_and_outputs_keep_their_names_and_order(tmp_path):
    from edgepet.exporters.pipeline import export

    model = _TwoInTwoOut().eval()
    bundle = export(model, tmp_path / "b", target="x86-avx2", input_shapes=["3,64", "3,48"])
    assert [i["name"] for i in bundle.manifest["inputs"]] == ["x", "z"]
    assert [o["name"] for o in bundle.manifest["outputs"]] == ["output_0", "output_1"]
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    z = np.random.default_rng(2).standard_normal((5, 48)).astype(np.float32)
    got = bundle.session().run({"x": x, "z": z})
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(z))]
    assert relative_error([got["output_0"], got["output_1"]], expected) < 0.2


def test_a_model_without_linear_layers_is_refused(tmp_path):
    from edgepet.exporters.pipeline import export
    from edgepet.runtime.errors import BadInputError

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(BadInputError, match="no linear layer"):
        export(Doubler(), tmp_path / "b", input_shapes=["2,3"])
    assert list(tmp_path.iterdir()) == []


def test_copied_layers_keep_their_own_names(tmp_path):
    """nn.TransformerEncoder deep-copies its layer: equal weights, distinct names."""
    from edgepet.exporters.pipeline import export

    layer = torch.nn.TransformerEncoderLayer(64, 4, 96, batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    bundle = export(model, tmp_path / "b", target="x86-avx2", input_shapes=["2,10,64"])
    names = [layer["name"] for layer in bundle.layers]
    assert names == [f"layers.{i}.{n}" for i in (0, 1) for n in (
        "self_attn.in_proj_weight", "self_attn.out_proj", "linear1", "linear2")]
    assert all(r.ok for r in bundle.verify())


def test_a_head_tied_to_the_embedding_is_named_after_the_head(tmp_path):
    from edgepet.exporters.pipeline import export

    model = examples.TinyLlama().eval()
    model.lm_head.weight = model.embed.weight  # tied, as in many small language models
    bundle = export(model, tmp_path / "b", target="x86-avx2")
    assert bundle.layers[-1]["name"] == "lm_head"
    assert all(r.ok for r in bundle.verify())
