"""Llama-family decoders (GGUF or Hugging Face folder) to LutMatMul decoder bundles.

``checkpoint`` reads the weights, tokenizer and chat template; ``graph`` writes the
decoder graph with a KV cache; ``export`` quantizes and writes the bundle.
"""

from edgepet.exporters.llm.checkpoint import Checkpoint, LlamaConfig, is_llm_source, load_checkpoint
from edgepet.exporters.llm.export import export_decoder

__all__ = ["Checkpoint", "LlamaConfig", "export_decoder", "is_llm_source", "load_checkpoint"]
