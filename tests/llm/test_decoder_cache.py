"""DecoderSession's cache of fixed-capacity buffers (op ABI 5): written in place call after
call, grown when full, and still a value — an earlier cache can be extended again, a
fresh prompt never overwrites a cache someone holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepet.runtime.errors import BadInputError
from edgepet.runtime.generate import open_decoder

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

IDS = [5, 70, 33, 100, 7, 8, 9, 250, 17, 44, 3, 91]


@pytest.fixture
def session(tiny_fp32_bundle):
    return open_decoder(tiny_fp32_bundle)


def _full(session, ids):
    """Logits of the last position, from one call over all ``ids``."""
    return session.forward(ids, None)[0][-1]


def test_one_token_at_a_time_writes_the_same_buffers_and_matches_one_call(session):
    assert session._shared  # this version's bundles use the shared-buffer cache
    logits, cache = session.forward(IDS[:4])
    buffers, first = cache.buffers, cache[0]
    for n, token in enumerate(IDS[4:], start=5):
        logits, cache = session.forward([token], cache)
        assert cache.length == n and cache.buffers is buffers and cache[0] is first
    np.testing.assert_allclose(logits[-1], _full(session, IDS), rtol=1e-5, atol=1e-5)


def test_an_earlier_cache_extended_again_is_copied_and_both_stay_right(session):
    _, five = session.forward(IDS[:5])
    _, six = session.forward([IDS[5]], five)
    other, six_b = session.forward([99], five)  # five is older than six: a copy
    assert six_b.buffers is not six.buffers
    np.testing.assert_allclose(other[-1], _full(session, IDS[:5] + [99]), rtol=1e-5,
                               atol=1e-5)
    on, _ = session.forward([IDS[6]], six)  # six was not disturbed
    np.testing.assert_allclose(on[-1], _full(session, IDS[:7]), rtol=1e-5, atol=1e-5)


def test_a_fresh_prompt_leaves_a_held_cache_alone_and_reuses_free_buffers(session):
    _, held = session.forward(IDS[:6])
    free = session.forward([1, 2, 3], None)[1].buffers  # while `held` is alive: new ones
    assert free is not held.buffers
    logits = session.forward([IDS[6]], held)[0]
    np.testing.assert_allclose(logits[-1], _full(session, IDS[:7]), rtol=1e-5, atol=1e-5)
    _, again = session.forward(IDS[:3], None)  # no cache of `free` is alive: reused
    assert again.buffers is free


def test_buffers_grow_when_full_and_keep_their_positions(session):
    session.reserve(3)
    _, cache = session.forward(IDS[:3])
    capacity = cache.buffers.capacity
    assert capacity < session.max_context
    ids = list(IDS[:3])
    while cache.length <= capacity:  # past the first capacity
        token = (7 * cache.length) % 200 + 3
        logits, cache = session.forward([token], cache)
        ids.append(token)
    assert cache.buffers.capacity > capacity
    np.testing.assert_allclose(logits[-1], _full(session, ids), rtol=1e-5, atol=1e-5)


def test_a_cache_past_the_context_is_a_clear_error(session):
    _, cache = session.forward(IDS)
    with pytest.raises(BadInputError, match=r"12 cached \+ 300 new tokens exceed this "
                                            r"bundle's context of 256"):
        session.forward([1] * 300, cache)


def test_the_default_cache_is_float16_and_stepping_matches_one_call(tiny_2bit_bundle):
    session = open_decoder(tiny_2bit_bundle)
    assert session.bundle.manifest["decoder"]["cache"]["dtype"] == "float16"
    logits, cache = session.forward(IDS[:4])
    assert cache.buffers.arrays[0].dtype == np.float16
    for token in IDS[4:]:
        logits, cache = session.forward([token], cache)
    # Every cached position is rounded to fp16 the same way in both: only the order of
    # the sums differs.
    np.testing.assert_allclose(logits[-1], _full(session, IDS), rtol=1e-4, atol=1e-4)


def test_an_unknown_kv_cache_storage_is_refused_before_anything_is_written(tmp_path,
                                                                         tiny_gguf):
    from edgepet.exporters.llm import export_decoder

    with pytest.raises(BadInputError, match="--kv-cache 'int8' is unknown — use float16 or "
                                            "float32"):
        export_decoder(tiny_gguf, tmp_path / "b", kv_cache="int8")
    assert not (tmp_path / "b").exists()


def _as_abi_4(bundle: Path, out: Path) -> Path:
    """``bundle`` (float cache) rewritten as op ABI 4 wrote decoders: the appending cache,
    no past_length."""
    import hashlib
    import json
    import shutil

    import onnx

    shutil.copytree(bundle, out)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    graph = model.graph
    kept = [i for i in graph.input if i.name != "past_length"]
    del graph.input[:]
    graph.input.extend(kept)
    for node in graph.node:
        if node.op_type == "GroupQueryRotaryAttention":
            del node.input[5:]
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past.", "present.")):
            value.type.tensor_type.shape.dim[2].dim_param = \
                "past" if value.name.startswith("past.") else "total"
    onnx.save(model, str(out / "model.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "model.onnx").read_bytes()
    manifest["files"]["model.onnx"] = {"bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}
    manifest["operator"]["abi_version"] = 4
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_an_abi_4_bundle_decodes_with_its_appending_cache(tmp_path, tiny_fp32_bundle):
    old = open_decoder(_as_abi_4(tiny_fp32_bundle, tmp_path / "abi4"))
    new = open_decoder(tiny_fp32_bundle)
    assert not old._shared and new._shared
    logits, cache = old.forward(IDS[:5])
    assert cache.length == 5 and cache[0].shape()[2] == 5
    for token in IDS[5:]:
        logits, cache = old.forward([token], cache)
    assert cache.length == len(IDS)
    np.testing.assert_allclose(logits[-1], _full(new, IDS), rtol=1e-5, atol=1e-5)
    assert old.generate("the cat", max_new_tokens=8).tokens == \
        new.generate("the cat", max_new_tokens=8).tokens


def test_cli_kv_cache_choice_for_decoders_only(tmp_path, tiny_hf, capsys):
    from edgepet.cli import main

    out = tmp_path / "f32"
    assert main(["export", str(tiny_hf), "--kv-cache", "float32", "-o", str(out),
                 "--quiet"]) == 0
    assert open_decoder(out)._cache_dtype == np.float32
    capsys.readouterr()
    assert main(["export", "--example", "mlp", "--kv-cache", "float16", "-o",
                 str(tmp_path / "mlp"), "--quiet"]) == 2
    assert "--kv-cache applies to decoder checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "mlp").exists()
