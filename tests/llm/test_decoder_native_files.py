"""Decoder bundles for another platform carry its op library and edgepet-run, or say what
is missing, exactly as encoder bundles do (tests/exporters/test_native_files.py)."""

from __future__ import annotations

import pytest

import edgepet
from edgepet.exporters import bundle as bundle_writer
from edgepet.runtime import BadInputError, Bundle
from edgepet.runtime.session import library_arch
from edgepet.targets import get_target


def test_an_rpi5_decoder_bundle_ships_the_aarch64_op_library_and_runner(tiny_gguf, tmp_path):
    files = bundle_writer.native_files(get_target("rpi5"))
    if files.missing:
        pytest.skip("this edgepet was built without the aarch64 cross build: "
                    + "; ".join(m["why"] for m in files.missing))
    bundle = edgepet.export(str(tiny_gguf), tmp_path / "b", target="rpi5")
    op = bundle.manifest["operator"]
    assert op["library"] == "lib/libedgepet_ort.so" and op["runner"] == "bin/edgepet-run"
    assert op["missing"] == []
    for rel in (op["library"], op["runner"]):
        assert rel in bundle.manifest["files"]
        assert library_arch(bundle.path / rel) == "aarch64"


def test_a_decoder_bundle_says_what_is_missing_and_require_native_refuses(
        tiny_gguf, tmp_path, monkeypatch):
    empty = tmp_path / "install"
    empty.mkdir()
    monkeypatch.setattr(bundle_writer, "install_folders", lambda: [empty])
    said: list[str] = []
    bundle = edgepet.export(str(tiny_gguf), tmp_path / "b", target="rpi5",
                            progress=said.append)
    op = bundle.manifest["operator"]
    assert op["library"] is None and op["runner"] is None
    assert {m["what"] for m in op["missing"]} == {"op library", "edgepet-run"}
    assert any("warning" in line and "operator.missing" in line for line in said)
    with pytest.raises(BadInputError, match="nothing was written"):
        edgepet.export(str(tiny_gguf), tmp_path / "strict", target="rpi5",
                       require_native=True)
    assert not (tmp_path / "strict").exists()


def test_a_host_decoder_bundle_ships_no_native_files(tiny_fp32_bundle):
    op = Bundle.open(tiny_fp32_bundle).manifest["operator"]
    assert op["library"] is None and op["runner"] is None and op["missing"] == []
