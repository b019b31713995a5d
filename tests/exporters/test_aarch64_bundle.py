"""An rpi5 bundle runs on aarch64: ONNX Runtime's own aarch64 build, the op library the
bundle ships, no Python — under qemu on an x86-64 host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_rpi5_bundle_gives_the_same_outputs_on_aarch64(tmp_path, aarch64_c_app, monkeypatch):
    from edgepet import kernels
    from edgepet.exporters.pipeline import export

    # These 32 rows are a 2-bit prefill: NEON and AVX2 keep it on the LUT path, where
    # AVX512-VNNI would take the dot path (native/src/kernels/dot4.h, uses_dot_prefill).
    if "avx2" not in kernels.available_kernels():
        pytest.skip("the host has no AVX2 kernel to compare the NEON build with")
    bundle = export("example:llama", tmp_path / "rpi5", target="rpi5", bits=2)
    library = bundle.manifest["operator"]["library"]
    if library is None:
        pytest.skip("this edgepet was built without the aarch64 op library")
    run = aarch64_c_app(bundle.path / library, bundle.model_path, 2, 16)
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.array([float(v) for v in run.stdout.split()], np.float32)
    ids = (np.arange(32) % 7).reshape(2, 16).astype(np.int64)  # what run_model feeds
    monkeypatch.setenv("EDGEPET_KERNEL", "avx2")  # for the host's session alone
    want = bundle.session().run({"input_ids": ids})["output"].ravel()
    assert got.shape == want.shape
    # NEON and AVX2 build the same int8 tables; only float summation order differs.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
