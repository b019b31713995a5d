"""edgepet-run: a bundle's timings, peak RSS and errors without Python — on this machine
and, cross-built, on aarch64 under qemu (numbers only: emulated times mean nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgepet.device_tests import native
from edgepet.runtime import BadInputError, op_library_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ort_library() -> str:
    import onnxruntime

    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    if not found:
        pytest.skip("the onnxruntime wheel holds no libonnxruntime.so (not Linux?)")
    return str(found[0])


@pytest.fixture(scope="module")
def runner() -> Path:
    try:
        return native.runner_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))


def _args(ort_library, *extra):
    return ("--onnxruntime", ort_library, "--op-library", op_library_path(), *extra)


def test_runner_times_the_bundle_and_matches_python_verify(runner, ort_library, demo_bundle):
    got = native.run(demo_bundle.path, *_args(ort_library, "--runs", "7", "--threads", "1"))
    assert got["ok"] and got["n_runs"] == 7 and len(got["samples_ns"]) == 7
    assert got["p99_ns"] >= got["p90_ns"] >= got["median_ns"] > 0 and got["load_ns"] > 0
    assert 0 < got["peak_rss_bytes"] < 2 << 30 and got["batch"] == 1
    expected = demo_bundle.verify(threads=1)[0]
    (task,) = got["accuracy"]
    assert task["vs_pytorch"]["relative_error"] == pytest.approx(expected.vs_pytorch, rel=1e-4)
    assert task["vs_dequantized"]["relative_error"] == pytest.approx(expected.vs_quantized,
                                                                rel=1e-3)


def test_runner_checks_every_adapter_and_activates_one(runner, ort_library, adapter_bundle):
    got = native.run(adapter_bundle.path, *_args(ort_library, "--adapter", "b", "--runs", "2"))
    assert got["adapter"] == "b"
    assert [a["adapter"] for a in got["accuracy"]] == ["a", "b"]
    python = {r.adapter: r.vs_pytorch for r in adapter_bundle.verify()}
    for task in got["accuracy"]:
        assert task["ok"]
        assert task["vs_pytorch"]["relative_error"] == pytest.approx(python[task["adapter"]],
                                                                  rel=1e-3)


def test_runner_exit_codes(runner, ort_library, demo_bundle, tmp_path):
    def code(*args):
        return subprocess.run([str(runner), *map(str, args)], capture_output=True,
                              text=True).returncode

    assert code(tmp_path / "none") == 2
    assert code(demo_bundle.path, "--runs", "x") == 2
    with pytest.raises(BadInputError, match="op library"):
        native.run(demo_bundle.path, "--onnxruntime", ort_library, "--op-library",
                   tmp_path / "missing.so")
    with pytest.raises(BadInputError, match="no adapter 'z'"):
        native.run(demo_bundle.path, *_args(ort_library, "--adapter", "z"))
    strict = tmp_path / "strict"
    shutil.copytree(demo_bundle.path, strict, ignore=shutil.ignore_patterns("reports"))
    manifest = json.loads((strict / "manifest.json").read_text())
    manifest["reference"]["tolerance"]["vs_pytorch"] = 1e-6
    (strict / "manifest.json").write_text(json.dumps(manifest))
    assert code(strict, *_args(ort_library, "--runs", "1")) == 3  # as `edgepet verify`


def test_runner_cross_built_for_aarch64_runs_an_rpi5_bundle_under_qemu(
        tmp_path, aarch64_tools, ort_headers, aarch64_run):
    from edgepet.exporters.pipeline import export

    bundle = export("example:llama", tmp_path / "rpi5", target="rpi5", bits=2)
    if bundle.manifest["operator"]["library"] is None:
        pytest.skip("this edgepet was built without the aarch64 op library")
    binary = tmp_path / "edgepet-run-aarch64"
    subprocess.run(["aarch64-linux-gnu-g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{ort_headers}", str(ROOT / "native/runner/edgepet_run.cc"), "-o",
                    str(binary), "-ldl"], check=True, capture_output=True)
    assert b"ARM aarch64" in subprocess.run(["file", str(binary)], capture_output=True).stdout \
        if shutil.which("file") else True
    done = aarch64_run(aarch64_tools, binary, bundle.path, "--runs", "2", "--warmup", "0",
                       "--threads", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["op_library"].endswith(bundle.manifest["operator"]["library"])
    assert got["n_runs"] == 2 and got["ok"]
    (task,) = got["accuracy"]
    # NEON against AVX2: the same int8 tables, only float summation order differs.
    expected = bundle.verify()[0]
    assert task["vs_pytorch"]["relative_error"] == pytest.approx(expected.vs_pytorch, rel=1e-3)


def test_the_edgepet_run_an_rpi5_bundle_ships_runs_it_under_qemu(tmp_path, aarch64_tools,
                                                                  aarch64_run):
    from edgepet.exporters.pipeline import export

    bundle = export("example:llama", tmp_path / "rpi5", target="rpi5", bits=2)
    op = bundle.manifest["operator"]
    if op["library"] is None or op.get("runner") is None:
        pytest.skip("this edgepet was built without the aarch64 cross build: "
                    + "; ".join(m["why"] for m in op["missing"]))
    # the bundle alone: its runner, its op library (read from the manifest), the device's ORT
    done = aarch64_run(aarch64_tools, bundle.path / op["runner"], bundle.path, "--runs", "2",
                       "--warmup", "0", "--threads", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["op_library"] == f"{bundle.path}/{op['library']}"
    assert got["n_runs"] == 2 and got["ok"]
    (task,) = got["accuracy"]
    expected = bundle.verify()[0]  # NEON against AVX2: only float summation order differs
    assert task["vs_pytorch"]["relative_error"] == pytest.approx(expected.vs_pytorch, rel=1e-3)
