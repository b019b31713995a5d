"""`edgepet targets | inspect | run | verify | demo` and the help they print."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest

from edgepet.targets import TARGETS


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from edgepet.cli import main

    out = tmp_path_factory.mktemp("cli") / "mlp"
    assert main(["export", "--example", "mlp", "--target", "x86-avx2", "--bits", "2",
                 "-o", str(out), "--quiet"]) == 0
    return out


def test_help_teaches_the_commands_and_input_kinds(cli, capsys):
    from edgepet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("export", "run", "inspect", "verify", "targets", "demo"):
        assert command in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for hint in ("--trust", "--arch", "torch.export.save", "--adapter", "--input-shape",
                 "--keep", "ternary"):
        assert hint in text


def test_no_command_prints_help(cli):
    code, out, _ = cli()
    assert code == 0 and "usage: edgepet" in out


def test_unknown_option_is_exit_code_2(cli):
    with pytest.raises(SystemExit) as exit_info:
        cli("export", "--no-such-option")
    assert exit_info.value.code == 2


def test_targets_lists_every_profile(cli):
    code, out, _ = cli("targets")
    assert code == 0
    for name in ("rpi5", "android-arm64", "apple-m1", "apple-m2", "x86-avx2", "x86-avx512"):
        assert name in out
    assert "aarch64-linux-gnu-g++" in out and "asimddp" in out
    code, out, _ = cli("targets", "--json")
    data = json.loads(out)
    assert set(data) == set(TARGETS)
    assert data["rpi5"]["missing_features"] == ["i8mm", "sve"]
    assert all({"isa_features", "default_bits", "default_group_size", "threads", "toolchain"}
               <= set(profile) for profile in data.values())


def test_inspect_sizes_match_the_files(cli, bundle_dir):
    code, out, _ = cli("inspect", bundle_dir)
    assert code == 0
    for word in ("x86-avx2", "2-bit", "ABI", "fc1", "fc2", "head", "smaller", "bits/w"):
        assert word in out
    manifest = json.loads(cli("inspect", bundle_dir, "--json")[1])
    files = manifest["files"]
    on_disk = {p.relative_to(bundle_dir).as_posix(): p.stat().st_size
               for p in bundle_dir.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert {k: v["bytes"] for k, v in files.items()} == on_disk
    assert manifest["sizes"]["bundle_bytes"] == sum(on_disk.values())
    # Each layer's stored bytes are the bytes of its initializers in model.onnx.
    model = onnx.load(str(bundle_dir / "model.onnx"))
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    for layer in manifest["layers"]:
        node = next(n for n in model.graph.node if n.name == layer["node"])
        assert layer["stored_bytes"] == sum(sizes[i] for i in node.input[1:] if i)
    weights = sum(sizes.values())
    assert manifest["sizes"]["weight_bytes"] == weights
    expected = manifest["sizes"]["float_weight_bytes"] / weights
    assert manifest["sizes"]["compression"] == pytest.approx(expected, rel=1e-3)
    assert manifest["sizes"]["compression"] > 8  # 2-bit codes + fp32 scales per 64


def test_run_reads_npy_and_npz_and_writes_outputs(cli, bundle_dir, tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    code, out, _ = cli("run", bundle_dir, "--input", tmp_path / "x.npy", "--output",
                       tmp_path / "y.npz")
    assert code == 0 and "output: float32 [3, 10]" in out
    code, _, _ = cli("run", bundle_dir, "--input", tmp_path / "x.npz", "--output",
                     tmp_path / "y2.npz")
    assert code == 0
    y, y2 = np.load(tmp_path / "y.npz")["output"], np.load(tmp_path / "y2.npz")["output"]
    np.testing.assert_array_equal(y, y2)
    import edgepet.api

    np.testing.assert_array_equal(edgepet.api.load(bundle_dir).run(x)["output"], y)


@pytest.mark.parametrize("make, expected", [
    (lambda p: np.save(p / "bad.npy", np.zeros((3, 95), np.float32)), "[3, 95]"),
    (lambda p: np.savez(p / "bad.npz", y=np.zeros((3, 96), np.float32)), "missing input"),
    (lambda p: (p / "bad.npy").write_text("garbage"), "not a readable"),
])
def test_run_refuses_inputs_that_do_not_fit(cli, bundle_dir, tmp_path, make, expected):
    make(tmp_path)
    path = next(tmp_path.glob("bad.*"))
    code, _, err = cli("run", bundle_dir, "--input", path)
    assert code == 2 and expected in err


def test_run_refuses_an_unknown_adapter(cli, bundle_dir, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 96), np.float32))
    code, _, err = cli("run", bundle_dir, "--input", tmp_path / "x.npy", "--adapter", "nope")
    assert code == 2 and "no adapter 'nope'" in err


def test_verify_reports_errors_within_tolerance(cli, bundle_dir):
    code, out, _ = cli("verify", bundle_dir)
    assert code == 0 and "ok" in out and "vs PyTorch fp32" in out
    results = json.loads(cli("verify", bundle_dir, "--json")[1])
    assert results[0]["ok"] is True
    assert results[0]["relative_error_vs_quantized"] < 0.05


def test_verify_fails_with_exit_code_3_beyond_tolerance(cli, bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["reference"]["tolerance"]["vs_pytorch"] = 1e-6
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = cli("verify", copy)
    assert code == 3 and "FAILED" in out


def test_commands_on_a_missing_bundle_exit_with_code_2(cli, tmp_path):
    for command in ("inspect", "verify"):
        code, _, err = cli(command, tmp_path / "nothing")
        assert code == 2 and "not a bundle folder" in err


def test_demo_exports_runs_and_verifies_in_well_under_a_minute(cli, tmp_path):
    start = time.perf_counter()
    code, out, err = cli("demo", "-o", tmp_path / "demo")
    assert code == 0, err
    assert time.perf_counter() - start < 30
    assert "LutMatMul" in out and "verify [model] ok" in out and "ran " in out
    assert (tmp_path / "demo" / "manifest.json").is_file()


def test_export_without_a_model_uses_the_example(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("export", "--quiet", "--example", "vit", "--bits", "ternary")
    assert code == 0 and "ternary (1.58-bit)" in out
    assert (tmp_path / "edgepet-example" / "manifest.json").is_file()


def test_inspect_shows_the_bits_each_layer_stores_per_weight(cli, bundle_dir):
    from edgepet.cli import stored_bits_per_weight

    code, out, _ = cli("inspect", bundle_dir)
    manifest = json.loads(cli("inspect", bundle_dir, "--json")[1])
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.strip() and line.split()[0] in {lay["name"] for lay in manifest["layers"]}}
    for layer in manifest["layers"]:
        shown = float(rows[layer["name"]][-1])
        assert shown == round(stored_bits_per_weight(layer), 2)
        if layer["bits"] == 2 and layer["group_size"] == 64:
            # codes + fp16 scales at least; tiles of 32 rows, padded groups and the bias
            # add more on layers this small
            assert shown >= 2.25


def test_export_with_zero_level_codes_records_them_and_runs(cli, tmp_path):
    """--zero-level: symmetric codes s*(q - 2^(b-1)); every layer says so in the manifest and
    on its node, inspect marks them, and the bundle verifies against its dequantized twin."""
    out = tmp_path / "mlp3z"
    code, summary, _ = cli("export", "--example", "mlp", "--bits", "3", "--zero-level",
                           "--quantizer", "rtn", "-o", out, "--quiet")
    assert code == 0 and "symmetric with a zero level" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["zero_level"] is True
    assert manifest["operator"]["abi_version"] == 6
    assert all(layer["zero_level"] for layer in manifest["layers"] if layer["bits"])
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "LutMatMul"]
    assert nodes and all(any(a.name == "zero_level" and a.i == 1 for a in n.attribute)
                         for n in nodes)
    code, shown, _ = cli("inspect", out)
    assert code == 0 and "z zero-level codes" in shown
    assert cli("verify", out)[0] == 0


@pytest.mark.parametrize("flags,message", [
    (["--bits", "1", "--zero-level"], "--zero-level is for 2-, 3- and 4-bit codes"),
    (["--bits", "ternary", "--zero-level"], "--zero-level is for 2-, 3- and 4-bit codes"),
    (["--bits", "4", "--zero-level", "--no-symmetric"], "--zero-level codes are symmetric"),
])
def test_zero_level_where_it_means_nothing_is_refused_before_anything_is_written(
        cli, tmp_path, flags, message):
    out = tmp_path / "refused"
    code, _, err = cli("export", "--example", "mlp", *flags, "-o", out, "--quiet")
    assert code == 2 and message in err and not out.exists()
