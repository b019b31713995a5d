import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_helpers import tiny_checkpoint, write_gguf, write_hf_folder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ck():
    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_ck):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_ck)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, tiny_ck):
    return write_hf_folder(tmp_path_factory.mktemp("hf") / "tiny-llama", tiny_ck)


@pytest.fixture(scope="session")
def tiny_fp32_bundle(tmp_path_factory, tiny_gguf):
    from edgepet.exporters.llm import export_decoder

    out = tmp_path_factory.mktemp("bundles") / "fp32"
    export_decoder(tiny_gguf, out, bits=4, keep=["*"], embedding="float32", kv_cache="float32")
    return out


@pytest.fixture(scope="session")
def tiny_2bit_bundle(tmp_path_factory, tiny_gguf):
    from edgepet.exporters.llm import export_decoder

    out = tmp_path_factory.mktemp("bundles") / "2bit"
    export_decoder(tiny_gguf, out, bits=2, max_context=48, layer_bits={})
    return out
