"""--device ssh:// through a real OpenSSH server on 127.0.0.1; adb with recorded outputs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from edgepet.device_tests import harness, remote
from edgepet.runtime import BadInputError

FIXTURES = Path(__file__).with_name("fixtures")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 with throw-away host and client keys."""
    server = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists()
                                      else None)
    if server is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client missing (Debian: apt-get install openssh-server "
                    "openssh-client; .ci/run does)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)],
                       check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    os.chmod(home / "authorized_keys", 0o600)
    port = _free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n"
        f"PidFile {home / 'sshd.pid'}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    process = subprocess.Popen([server, "-D", "-e", "-f", str(config)],
                               stderr=open(home / "sshd.log", "w"))
    options = [f"IdentityFile={home / 'client_key'}", f"UserKnownHostsFile={home / 'known'}",
               "StrictHostKeyChecking=accept-new", "IdentitiesOnly=yes"]
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                    text=True).stdout.strip()
    url = f"ssh://{user}@127.0.0.1:{port}"
    deadline = time.time() + 15
    while True:
        probe = subprocess.run(remote.SshTarget.parse(url, options).ssh_argv("true"),
                               capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"sshd did not accept a login: {probe.stderr}\n"
                        f"{(home / 'sshd.log').read_text()}")
        time.sleep(0.2)
    yield url, options
    process.terminate()
    process.wait(timeout=10)


def _args(options, python=sys.executable):
    return Namespace(ssh_option=options, remote_python=python)


def test_full_bench_through_a_loopback_ssh_server(sshd, demo_bundle, quick, tmp_path):
    url, ssh_options = sshd
    options = quick(demo_bundle, device=url, baselines=["ort-nbits4"],
                    output=str(tmp_path / "ssh-report"))
    report, out = remote.bench_remote(options, _args(ssh_options))
    assert report["device"]["kind"] == "ssh" and report["settings"]["device"] == url
    measured = {r["contender"] for r in report["results"] if r["n_runs"] == 4}
    assert measured == {"edgepet", "ort-nbits4"}
    assert report["results"][0]["accuracy"]
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.html"}
    assert json.loads((out / "report.json").read_text())["device"]["kind"] == "ssh"


def test_ssh_cli_exit_codes(sshd, demo_bundle, tmp_path, capsys):
    from edgepet.cli import main

    url, ssh_options = sshd
    flags = [f"--ssh-option={o}" for o in ssh_options]
    code = main(["bench", str(demo_bundle.path), "--device", url, *flags, "--remote-python",
                 "/nonexistent/python3", "-o", str(tmp_path / "r")])
    assert code == 2 and "no edgepet harness" in capsys.readouterr().err
    port = _free_port()  # nobody listens there
    code = main(["bench", str(demo_bundle.path), "--device", f"ssh://nobody@127.0.0.1:{port}",
                 "-o", str(tmp_path / "r2")])
    assert code == 2 and "cannot reach" in capsys.readouterr().err


def test_ssh_url_forms():
    t = remote.SshTarget.parse("ssh://pi@raspberrypi.local:2222", ["IdentityFile=/k"])
    assert t.ssh_argv("uname -m") == ["ssh", "-p", "2222", "-o", "BatchMode=yes", "-o",
                                      "ConnectTimeout=15", "-o", "IdentityFile=/k",
                                      "pi@raspberrypi.local", "uname -m"]
    assert remote.SshTarget.parse("ssh://host").port == 22
    for bad in ("pi@host", "ssh://", "ssh://pi@host:port", "ssh://h/path"):
        with pytest.raises(BadInputError):
            remote.SshTarget.parse(bad)


# --- adb (no phone here: recorded outputs) -------------------------------------------------


class FakeAdb:
    """Answers adb command lines from fixtures; 'runs' the harness by copying a report."""

    def __init__(self, report: Path, abi: str = "arm64-v8a") -> None:
        self.calls: list[list[str]] = []
        self.report, self.abi = report, abi

    def __call__(self, argv, stdin=None):
        self.calls.append(list(argv))
        args = argv[3:] if argv[1] == "-s" else argv[1:]
        if args[:1] == ["devices"]:
            return 0, (FIXTURES / "adb_devices.txt").read_bytes(), ""
        if args[:1] == ["push"]:
            return 0, b"1 file pushed\n", ""
        if args[:1] == ["pull"]:
            shutil.copy(self.report, args[2])
            return 0, b"", ""
        command = args[1]
        if command == "getprop ro.product.cpu.abi":
            return 0, self.abi.encode() + b"\n", ""
        if command == "dumpsys battery":
            return 0, (FIXTURES / "adb_dumpsys_battery.txt").read_bytes(), ""
        if "import edgepet.device_tests" in command:
            return 0, b"aarch64\n", ""
        return 0, b"", ""


@pytest.fixture(scope="module")
def local_report(demo_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("adb-report")
    options = harness.BenchOptions(bundle=str(demo_bundle.path), runs=2, seconds=None,
                                   rounds=1, warmup=0, delay=0, baselines=["none"],
                                   energy="none", output=str(out))
    harness.bench(options)
    return out / "report.json"


def test_adb_outputs_are_parsed():
    devices = remote.parse_adb_devices((FIXTURES / "adb_devices.txt").read_text())
    assert devices == {"R5CR10ABCDE": "device"}
    battery = remote.parse_dumpsys_battery((FIXTURES / "adb_dumpsys_battery.txt").read_text())
    assert battery["USB powered"] == "false" and battery["voltage"] == "3968"


def test_adb_command_lines(tmp_path, local_report, quick, monkeypatch):
    # An aarch64 bundle: what a phone would be given. Only its manifest is read here.
    bundle = tmp_path / "bundle"
    shutil.copytree(json.loads(local_report.read_text())["bundle"]["path"], bundle,
                    ignore=shutil.ignore_patterns("reports"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["target"].update(name="android-arm64", arch="aarch64")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("edgepet.runtime.Bundle.check_abi", lambda self: None)
    fake = FakeAdb(local_report)
    target = remote.AdbTarget.parse("adb", run=fake)
    options = quick(str(bundle), device="adb", output=str(tmp_path / "out"))
    report, out = remote.bench_remote(options, _args([], "python3"), transport=target)
    assert report["device"] == {"kind": "adb", "serial": "R5CR10ABCDE"}
    calls = [" ".join(c) for c in fake.calls]
    assert calls[0] == "adb devices -l"
    assert "adb -s R5CR10ABCDE shell getprop ro.product.cpu.abi" in calls
    assert "adb -s R5CR10ABCDE push" in " ".join(calls)
    run = next(c for c in calls if "-m edgepet.device_tests bench" in c)
    assert "/data/local/tmp/edgepet/run/bundle" in run and "--runs 4" in run
    assert any(c.startswith("adb -s R5CR10ABCDE pull /data/local/tmp/edgepet/run/report/"
                            "report.json") for c in calls)
    assert calls[-1] == "adb -s R5CR10ABCDE shell rm -rf /data/local/tmp/edgepet/run"
    assert (out / "report.md").is_file()


def test_adb_refuses_a_bundle_for_another_abi(local_report, quick):
    fake = FakeAdb(local_report, abi="arm64-v8a")
    bundle = json.loads(local_report.read_text())["bundle"]["path"]  # an x86_64 bundle
    with pytest.raises(BadInputError, match="made for x86-avx2 .x86_64.; the phone is arm64"):
        remote.bench_remote(quick(bundle, device="adb"), _args([]),
                            transport=remote.AdbTarget.parse("adb", run=fake))


def test_a_device_without_python_is_timed_by_edgepet_run(sshd, demo_bundle, quick, tmp_path):
    import onnxruntime

    from edgepet.device_tests import native

    try:
        native.runner_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    url, ssh_options = sshd
    ort = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))[0]
    args = Namespace(ssh_option=ssh_options, remote_python="/no/python3",
                     native_runner="auto", remote_onnxruntime=str(ort))
    options = quick(demo_bundle, device=url, threads=[1, 2], output=str(tmp_path / "native"))
    report, out = remote.bench_remote(options, args)
    assert [(r["contender"], r["n_threads"], r["n_runs"]) for r in report["results"]] == [
        ("edgepet", 1, 4), ("edgepet", 2, 4)]
    assert report["settings"]["runner"] == "edgepet-run"
    assert report["results"][0]["accuracy"][0]["vs_pytorch"]["relative_error"] == \
        pytest.approx(demo_bundle.verify()[0].vs_pytorch, rel=1e-4)
    assert any(u["what"] == "baselines" for u in report["unmeasured"])
    assert (out / "report.html").is_file()


class FakeAdbWithoutPython(FakeAdb):
    """A phone with no Python: the harness import fails, so bench turns to edgepet-run."""

    def __call__(self, argv, stdin=None):
        if "import edgepet.device_tests" in " ".join(argv):
            self.calls.append(list(argv))
            return 127, b"", "python3: not found"
        return super().__call__(argv, stdin)


def test_an_android_bundle_without_its_op_library_stops_before_copying(tmp_path, local_report,
                                                                       quick, monkeypatch):
    from edgepet.exporters.bundle import native_files
    from edgepet.targets import get_target

    bundle = tmp_path / "bundle"
    shutil.copytree(json.loads(local_report.read_text())["bundle"]["path"], bundle,
                    ignore=shutil.ignore_patterns("reports"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["target"].update(name="android-arm64", arch="aarch64")
    manifest["operator"]["missing"] = native_files(get_target("android-arm64")).missing
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("edgepet.runtime.Bundle.check_abi", lambda self: None)
    fake = FakeAdbWithoutPython(local_report)
    args = Namespace(ssh_option=[], remote_python="python3", native_runner="auto",
                     remote_onnxruntime=None)
    with pytest.raises(BadInputError, match="carries no op library for android-arm64.*"
                                            "android.toolchain.cmake"):
        remote.bench_remote(quick(str(bundle), device="adb"), args,
                            transport=remote.AdbTarget.parse("adb", run=fake))
    assert not any("push" in call for call in fake.calls)  # failed before copying anything
