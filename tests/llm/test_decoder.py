"""Decoder LLMs: import, the KV-cache graph, bundles, generation and perplexity (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llm_helpers import TINY, permute_rope_rows, torch_greedy, torch_logits, write_gguf

import edgepet
from edgepet.cli import main
from edgepet.exporters.llm import export_decoder, load_checkpoint
from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm.checkpoint import unpermute_rope_rows
from edgepet.exporters.llm.export import choose_bits
from edgepet.runtime.errors import BadInputError
from edgepet.runtime.generate import DecoderSession, Sampling, open_decoder

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")


# --- import -------------------------------------------------------------------------------


def test_rope_row_permutation_round_trips():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(24, 5)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, 3), 3), w)


def test_gguf_and_hf_folder_load_to_the_same_checkpoint(tiny_ck, tiny_gguf, tiny_hf):
    from_gguf, from_hf = load_checkpoint(tiny_gguf), load_checkpoint(tiny_hf)
    for ck in (from_gguf, from_hf):
        assert ck.config == TINY
        assert set(ck.weights) == set(tiny_ck.weights)
        for name, value in tiny_ck.weights.items():
            np.testing.assert_array_equal(ck.weights[name], value, err_msg=name)
        assert ck.eos_token_ids == [2] and ck.bos_token_id == 1
        assert "<|im_start|>" in ck.chat_template
    assert from_gguf.source_kind == "gguf" and from_hf.source_kind == "huggingface"
    assert from_gguf.tokenizer_json["model"]["vocab"] == tiny_ck.tokenizer_json["model"]["vocab"]


# --- the graph ----------------------------------------------------------------------------


def test_fp32_graph_matches_pytorch_for_prefill_and_cached_decode(tiny_ck):
    model = llm_graph.build_decoder(tiny_ck, llm_graph.float_weights(tiny_ck), 64, np.float32,
                                    kv_dtype=np.float32)
    session = edgepet.runtime.InferenceSession(model)
    ids = [5, 70, 33, 100, 7, 8, 9, 250]
    ref = torch_logits(tiny_ck, ids)
    full = session.run(None, llm_graph.prefill_feeds(TINY, ids, kv_dtype=np.float32))
    np.testing.assert_allclose(full[0][0], ref, atol=1e-4, rtol=1e-4)
    # Cache buffers of 16 positions, 5 filled by the prompt, then one token a call (the
    # buffers are fed back unbound: the op copies them to its output and writes there).
    out = session.run(None, llm_graph.prefill_feeds(TINY, ids[:5], capacity=16,
                                                    kv_dtype=np.float32))
    for length, token in enumerate(ids[5:], start=5):
        out = session.run(None, llm_graph.step_feeds(TINY, [token], out[1:], length))
        assert out[1].shape == (1, TINY.num_kv_heads, 16, TINY.head_dim)
    np.testing.assert_allclose(out[0][0, -1], ref[-1], atol=1e-4, rtol=1e-4)


def test_projections_are_fused_and_bits_follow_keep_and_overrides():
    names = [p.name for p in llm_graph.projections(TINY)]
    assert names[:4] == ["layers.0.attn.qkv", "layers.0.attn.o", "layers.0.mlp.gate_up",
                         "layers.0.mlp.down"] and names[-1] == "lm_head"
    projs = {p.name: p for p in llm_graph.projections(TINY)}
    keep, overrides = ["model.layers.1.self_attn.k_proj"], {"lm_head": 4, "layers.0.*": 3}
    assert choose_bits(projs["layers.1.attn.qkv"], 2, keep, overrides) is None
    assert choose_bits(projs["lm_head"], 2, keep, overrides) == 4
    assert choose_bits(projs["layers.0.mlp.down"], 2, keep, overrides) == 3
    assert choose_bits(projs["layers.1.mlp.down"], 2, keep, overrides) == 2


# --- bundles and generation ---------------------------------------------------------------


def test_2_and_3_bits_keep_attention_down_and_head_at_4_by_default(tmp_path, tiny_gguf):
    bundle = export_decoder(tiny_gguf, tmp_path / "b", bits=3)
    bits = {layer["name"]: layer["bits"] for layer in bundle.manifest["layers"]}
    assert bits["layers.0.mlp.gate_up"] == bits["layers.1.mlp.gate_up"] == 3
    assert {bits[n] for n in bits if "gate_up" not in n} == {4}
    assert bundle.manifest["decoder"]["layer_bits"] == {
        "lm_head": 4, "layers.*.attn.*": 4, "layers.*.mlp.down": 4}


def test_fp32_bundle_greedy_tokens_match_pytorch(tiny_ck, tiny_fp32_bundle):
    session = edgepet.load(tiny_fp32_bundle)
    assert isinstance(session, DecoderSession)
    ids = session.tokenizer.encode("the cat sat on the mat")
    tokens = list(session.stream_tokens(ids, 12, ignore_eos=True))
    assert tokens == torch_greedy(tiny_ck, ids, 12)


def test_quantized_bundle_is_checked_and_lists_every_projection(tiny_2bit_bundle):
    bundle = edgepet.runtime.Bundle.open(tiny_2bit_bundle)
    m = bundle.manifest
    assert m["kind"] == "decoder" and m["decoder"]["max_context"] == 48
    assert [layer["bits"] for layer in m["layers"]] == [2] * 9
    assert (tiny_2bit_bundle / m["decoder"]["tokenizer"]).is_file()
    assert all(r.ok for r in bundle.verify())


def test_generate_streams_pieces_that_join_to_the_text(tiny_2bit_bundle):
    session = open_decoder(tiny_2bit_bundle)
    pieces: list[str] = []
    result = session.generate("the cat", max_new_tokens=10, on_text=pieces.append)
    assert result.generated_tokens == 10 and result.stop_reason == "length"
    assert "".join(pieces) == result.text
    assert "".join(session.stream("the cat", max_new_tokens=10)) == result.text


def test_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_2bit_bundle):
    session = open_decoder(tiny_2bit_bundle)
    greedy = session.generate("the", max_new_tokens=8).tokens
    a = session.generate("the", max_new_tokens=8, temperature=1.5, seed=7).tokens
    b = session.generate("the", max_new_tokens=8, temperature=1.5, seed=7).tokens
    assert a == b
    assert session.generate("the", max_new_tokens=8, temperature=0.8, top_k=1,
                            seed=1).tokens == greedy
    assert session.generate("the", max_new_tokens=8, temperature=0.8, top_p=1e-6,
                            seed=2).tokens == greedy
    with pytest.raises(BadInputError):
        Sampling(temperature=1.0, top_p=0.0)


def test_generation_stops_at_eos_and_at_the_context(tiny_2bit_bundle):
    session = open_decoder(tiny_2bit_bundle)
    first = session.generate("the", max_new_tokens=1).tokens[0]
    session.tokenizer.eos_token_ids = [first]
    result = session.generate("the", max_new_tokens=5)
    assert result.tokens == [] and result.stop_reason == "eos"
    session.tokenizer.eos_token_ids = []
    ids = session.tokenizer.encode("the cat sat on the mat and the dog")
    result = session.generate("the cat sat on the mat and the dog", max_new_tokens=500)
    assert result.stop_reason == "context" and len(ids) + result.generated_tokens == 48


def test_chat_uses_the_chat_template(tiny_2bit_bundle):
    session = open_decoder(tiny_2bit_bundle)
    ids = session.prompt_ids(chat="hi")
    text = session.tokenizer.decode(ids, skip_special=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == 1  # <|im_start|> is one special token, not split into characters


def test_perplexity_scores_windows_from_an_empty_cache(tiny_ck, tiny_fp32_bundle):
    session = open_decoder(tiny_fp32_bundle)
    ids = session.tokenizer.encode("the cat sat on the mat. " * 6)[:40]
    result = session.perplexity(ids=ids, ctx=16)
    nll = 0.0
    for start in range(0, 40, 16):
        window = ids[start:start + 16]
        logits = torch_logits(tiny_ck, window).astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)
        nll -= sum(logp[i, window[i + 1]] for i in range(len(window) - 1))
    assert result.tokens == 40 - 3 and result.windows == 3
    assert result.perplexity == pytest.approx(np.exp(nll / 37), rel=1e-4)


# --- the command line ---------------------------------------------------------------------


def test_cli_export_generate_and_perplexity(tmp_path, tiny_hf, capsys):
    out = tmp_path / "b"
    assert main(["export", str(tiny_hf), "--bits", "4", "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "the cat", "--max-new-tokens", "5",
                 "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"text", "prompt_tokens", "generated_tokens", "prefill_tok_s",
            "decode_tok_s"} <= set(result)
    assert result["generated_tokens"] == 5 and result["prompt_tokens"] >= 2
    assert main(["generate", str(out), "--chat", "hello", "--max-new-tokens", "3"]) == 0
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 20)
    assert main(["perplexity", str(out), "--text", str(text), "--ctx", "32",
                 "--max-tokens", "70", "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ppl["ctx"] == 32 and ppl["tokens"] == 70 - 3 and ppl["perplexity"] > 1


def _bad(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_exit_2_and_write_nothing(tmp_path, tiny_ck, tiny_gguf, tiny_hf, capsys,
                                             tiny_2bit_bundle):
    out = tmp_path / "out"
    phi = write_gguf(tmp_path / "phi.gguf", tiny_ck, arch="phi3")
    assert "architecture 'phi3' is not supported" in _bad(
        ["export", str(phi), "-o", str(out), "--quiet"], capsys)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    assert "truncated" in _bad(["export", str(truncated), "-o", str(out), "--quiet"], capsys)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in tiny_hf.iterdir():
        if f.name != "tokenizer.json":
            (no_tok / f.name).write_bytes(f.read_bytes())
    assert "no tokenizer.json" in _bad(["export", str(no_tok), "-o", str(out), "--quiet"],
                                       capsys)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    long_prompt = "the cat sat on the mat " * 20
    assert "context is 48" in _bad(["generate", str(tiny_2bit_bundle), "--prompt",
                                    long_prompt], capsys)
    assert "not a bundle folder" in _bad(["generate", str(tmp_path / "nope"), "--prompt", "x"],
                                         capsys)


def test_export_refuses_a_context_beyond_the_model(tmp_path, tiny_gguf):
    with pytest.raises(BadInputError, match="exceeds the model's context"):
        export_decoder(tiny_gguf, tmp_path / "b", max_context=10_000)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
def test_zero_level_decoder_codes_follow_their_widths_and_verify(tmp_path, tiny_gguf, quantizer):
    """--zero-level at 3 bits: the 3-bit gate_up and the 4-bit rest take zero-level codes,
    a 1-bit override keeps its own; the bundle checks out against its dequantized twin."""
    calibration = {"calibration_tokens": 128} if quantizer == "gptq" else {}
    bundle = export_decoder(tiny_gguf, tmp_path / "z", bits=3, zero_level=True,
                            quantizer=quantizer, **calibration,
                            layer_bits={"layers.1.mlp.down": 1, "layers.*.attn.*": 4})
    m = bundle.manifest
    assert m["quantization"]["zero_level"] is True and m["quantization"]["symmetric"] is True
    for layer in m["layers"]:
        assert layer.get("zero_level", False) == (layer["bits"] in (2, 3, 4)), layer
    assert all(r.ok for r in bundle.verify())
    session = edgepet.load(bundle.path)
    assert len(list(session.stream_tokens(session.tokenizer.encode("the cat"), 4,
                                          ignore_eos=True))) == 4


def test_zero_level_with_a_size_plan_is_refused(tmp_path, tiny_gguf):
    with pytest.raises(BadInputError, match="--zero-level with --max-size is not supported"):
        export_decoder(tiny_gguf, tmp_path / "z", zero_level=True, max_size=10**6)
    assert not (tmp_path / "z").exists()
