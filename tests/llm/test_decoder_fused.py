"""The decoder graph's fused ops (GroupQueryRotaryAttention, SwiGLU) compute what the
standard-op graph computes: logits and caches agree for prefill and cached decode."""

from __future__ import annotations

import numpy as np
import pytest
from llm_helpers import TINY, tiny_weights

from edgepet import runtime
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.checkpoint import Checkpoint, LlamaConfig
from edgepet.quant import quantize

#: Multi-head (kv heads = heads), and grouped-query with 3 query heads per kv head.
MHA = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_layers=2,
                  num_heads=3, num_kv_heads=3, head_dim=16, rms_norm_eps=1e-5,
                  rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
GQA3 = LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=160, num_layers=3,
                   num_heads=6, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5,
                   rope_theta=500000.0, max_position_embeddings=256, tie_word_embeddings=True)


def _checkpoint(config: LlamaConfig) -> Checkpoint:
    w = tiny_weights(config, seed=3)
    if not config.tie_word_embeddings:
        w["lm_head.weight"] = w["model.embed_tokens.weight"] / 4
    return Checkpoint(config=config, weights=w, tokenizer_json={}, chat_template=None,
                      bos_token_id=1, eos_token_ids=[2], add_bos_token=False, source="t",
                      source_kind="test")


def _sessions(ck: Checkpoint, weights, context: int = 96, kv_dtype=np.float32):
    """The fused graph (cache of ``kv_dtype``) and the standard-op graph (float cache)."""
    return [runtime.InferenceSession(llm_graph.build_decoder(ck, weights, context, np.float32,
                                                             fused=fused, kv_dtype=kv_dtype))
            for fused in (True, False)]


#: Positions of the fused graph's cache buffers in these tests.
CAPACITY = 64


def _run(session, config, ids, past=None, length=0, num_logits=0):
    """One forward after ``past`` (``length`` positions filled; None: empty). The fused
    graph's caches are buffers of CAPACITY positions; the standard-op graph's append."""
    inputs = {i.name: i.type for i in session.get_inputs()}
    fused = llm_graph.PAST_LENGTH in inputs
    if past is None:
        kv_dtype = np.float16 if inputs["past.0.key"] == "tensor(float16)" else np.float32
        feeds = llm_graph.prefill_feeds(config, ids, num_logits, CAPACITY, fused, kv_dtype)
    else:
        feeds = llm_graph.step_feeds(config, ids, past, length, num_logits, fused)
    return session.run(None, feeds)


def _assert_same(fused_out, standard_out, length):
    """Logits equal, and the fused buffers' first ``length`` positions equal the
    standard-op graph's caches."""
    np.testing.assert_allclose(fused_out[0], standard_out[0], rtol=2e-4, atol=2e-4)
    for buffer, cache in zip(fused_out[1:], standard_out[1:], strict=True):
        assert buffer.shape[2] == CAPACITY and cache.shape[2] == length
        np.testing.assert_allclose(buffer[:, :, :length], cache, rtol=2e-4, atol=2e-4)


def _assert_close(half_out, standard_out, length, bound):
    """Each output within ``bound`` relative error (the norm of the difference over the
    norm of the float graph's), the caches over their first ``length`` positions."""
    pairs = [(half_out[0], standard_out[0])] + [
        (buffer[:, :, :length].astype(np.float64), cache)
        for buffer, cache in zip(half_out[1:], standard_out[1:], strict=True)]
    for got, want in pairs:
        assert np.linalg.norm(got - want) <= bound * np.linalg.norm(want)


@pytest.mark.parametrize("config", [TINY, MHA, GQA3], ids=["gqa2", "mha", "gqa3"])
def test_fused_graph_matches_standard_ops_for_prefill_and_decode(config):
    ck = _checkpoint(config)
    fused, standard = _sessions(ck, llm_graph.float_weights(ck))
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, 37).tolist()  # > 16: several query chunks
    outs = [_run(s, config, prompt) for s in (fused, standard)]
    _assert_same(*outs, 37)
    for length, token in enumerate(rng.integers(0, config.vocab_size, 6).tolist(), 37):
        outs = [_run(s, config, [token], out[1:], length, num_logits=1)
                for s, out in zip((fused, standard), outs, strict=True)]
        _assert_same(*outs, length + 1)


def test_an_fp16_cache_gives_the_float_cache_numbers_within_fp16_rounding():
    """The default cache is float16: keys and values rounded to fp16 (relative error
    <= 2^-11 each) move the caches and logits by well under 0.1 %."""
    ck = _checkpoint(GQA3)
    half, standard = _sessions(ck, llm_graph.float_weights(ck), kv_dtype=np.float16)
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, GQA3.vocab_size, 21).tolist()
    outs = [_run(s, GQA3, prompt) for s in (half, standard)]
    assert outs[0][1].dtype == np.float16
    _assert_close(*outs, 21, 1e-3)
    for length, token in enumerate(rng.integers(0, GQA3.vocab_size, 4).tolist(), 21):
        outs = [_run(s, GQA3, [token], out[1:], length, num_logits=1)
                for s, out in zip((half, standard), outs, strict=True)]
        _assert_close(*outs, length + 1, 1e-3)


def test_fused_graph_matches_standard_ops_with_lut_projections_and_a_chunked_prompt():
    """4-bit LutMatMul projections, a prompt in two pieces (past > 0 with seq > 1)."""
    ck = _checkpoint(TINY)
    weights = {name: quantize(w, 4, 32) for name, w in llm_graph.float_weights(ck).items()}
    fused, standard = _sessions(ck, weights)
    ids = list(range(3, 60, 2))
    outs = [_run(s, TINY, ids[:11]) for s in (fused, standard)]
    outs = [_run(s, TINY, ids[11:], out[1:], 11) for s, out in zip((fused, standard), outs,
                                                                    strict=True)]
    _assert_same(*outs, len(ids))


def test_fused_graph_has_no_mask_or_split_subgraph():
    ck = _checkpoint(TINY)
    model = llm_graph.build_decoder(ck, llm_graph.float_weights(ck), 64, np.float32)
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryRotaryAttention", "SwiGLU"} <= ops
    assert not ops & {"Split", "RotaryEmbedding", "Attention", "Range", "LessOrEqual",
                      "QuickGelu", "Expand"}
    standard = llm_graph.build_decoder(ck, llm_graph.float_weights(ck), 64, np.float32,
                                       fused=False)
    assert "Attention" in {n.op_type for n in standard.graph.node}
    assert len(model.graph.node) < len(standard.graph.node) - 8 * TINY.num_layers


def test_a_context_past_the_rope_tables_is_a_clear_error():
    ck = _checkpoint(TINY)
    session = runtime.InferenceSession(
        llm_graph.build_decoder(ck, llm_graph.float_weights(ck), 16, np.float32))
    out = _run(session, TINY, list(range(10)))
    with pytest.raises(Exception, match="beyond the RoPE tables' 16 positions"):
        _run(session, TINY, list(range(7)), out[1:], 10)


def test_abi_3_bundles_still_run_and_a_library_without_the_fused_ops_is_refused(
        tiny_2bit_bundle):
    from edgepet.runtime.bundle import Bundle, BundleError
    from edgepet.runtime.session import installed_operator

    bundle = Bundle.open(tiny_2bit_bundle)
    abi, layout = installed_operator()
    assert abi == 6 and bundle.manifest["operator"]["abi_version"] == 6
    # ABI 4 added operators (and changed 3-bit storage only): a bundle of ABI 3 without
    # 3-bit weights (a standard-op decoder graph) still runs.
    bundle.manifest["operator"].update(abi_version=3, layout="tile32-nibble4")
    bundle.check_operator((4, layout))
    bundle.check_operator((5, layout))
    bundle.manifest["operator"]["layout"] = layout
    # ABI 5 changed no layout: an ABI-4 bundle (appending cache) runs on this library.
    bundle.manifest["operator"]["abi_version"] = 4
    bundle.check_operator((5, layout))
    bundle.check_operator((6, layout))
    # ABI 6 added an optional attribute and changed no layout: ABI-5 bundles run too.
    bundle.manifest["operator"]["abi_version"] = 5
    bundle.check_operator((6, layout))
    # A bundle using the fused ops, opened with a library of ABI 3 (which lacks them).
    with pytest.raises(BundleError, match="speaks ABI 3 and lacks operators the model uses"):
        bundle.check_operator((3, layout), "old/libedgepet_ort.so")
    # This bundle's shared cache buffer on an ABI-4 library (whose attention lacks it).
    bundle.manifest["operator"]["abi_version"] = 5
    with pytest.raises(BundleError, match="speaks ABI 4 and lacks operators the model uses"):
        bundle.check_operator((4, layout), "old/libedgepet_ort.so")
    # An ABI-6 bundle on an ABI-5 library, which would read zero-level codes as odd levels.
    bundle.manifest["operator"]["abi_version"] = 6
    with pytest.raises(BundleError, match="speaks ABI 5 and lacks operators the model uses"):
        bundle.check_operator((5, layout), "old/libedgepet_ort.so")
