"""``--device ssh://USER@HOST[:PORT]`` and ``--device adb[:SERIAL]``.

The bundle is copied to the device, the harness runs there (``python -m
edgepet.device_tests bench``, so the numbers are the device's own), and report.json
comes back; report.md and report.html are rendered here from it.

ssh is tested for real against a loopback OpenSSH server. adb is tested with recorded
outputs only (tests/device_tests/fixtures) — untested on a phone.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgepet.runtime import BadInputError
from edgepet.runtime.manifest import missing_native

Progress = Callable[[str], None]
#: Runs an argv; returns (exit code, stdout bytes, stderr text). Tests swap it.
Runner = Callable[[Sequence[str], bytes | None], tuple[int, bytes, str]]

_ABIS = {"arm64-v8a": "aarch64", "x86_64": "x86_64", "armeabi-v7a": "armv7", "x86": "x86"}


def _run(argv: Sequence[str], stdin: bytes | None = None) -> tuple[int, bytes, str]:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=None)
    except FileNotFoundError:
        raise BadInputError(f"{argv[0]} is not installed here — install it (Debian: "
                            f"{'openssh-client' if argv[0] == 'ssh' else 'adb'})") from None
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def _streamed(argv: Sequence[str], stdin: bytes | None = None) -> tuple[int, bytes, str]:
    """Like _run, but the remote's stderr (its progress) goes to ours as it comes."""
    process = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else None,
                               stdout=subprocess.PIPE, stderr=None)
    out, _ = process.communicate(stdin)
    return process.returncode, out, ""


@dataclass
class Transport:
    """How to reach a device: a shell command runner plus file transfer."""

    name: str
    run: Runner = _run

    def shell(self, command: str, stream: bool = False) -> tuple[int, bytes, str]:
        raise NotImplementedError

    def push_dir(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def fetch(self, remote: str) -> bytes:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}


# --- ssh ---------------------------------------------------------------------------------------


@dataclass
class SshTarget(Transport):
    user: str | None = None
    host: str = ""
    port: int = 22
    options: tuple[str, ...] = ()

    @classmethod
    def parse(cls, url: str, options: Sequence[str] = (), run: Runner = _run) -> SshTarget:
        """``ssh://USER@HOST[:PORT]`` (USER optional)."""
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
            raise BadInputError(f"--device {url!r}: write ssh://USER@HOST or "
                                "ssh://USER@HOST:PORT")
        try:
            port = parts.port or 22
        except ValueError:
            raise BadInputError(f"--device {url!r}: the port is not a number") from None
        for option in options:
            if "=" not in option:
                raise BadInputError(f"--ssh-option {option!r}: write KEY=VALUE")
        return cls(name="ssh", run=run, user=parts.username, host=parts.hostname, port=port,
                   options=tuple(options))

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_argv(self, command: str) -> list[str]:
        """The ssh command line that runs ``command`` on the device."""
        argv = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        for option in self.options:
            argv += ["-o", option]
        return argv + [self.destination, command]

    def shell(self, command: str, stream: bool = False) -> tuple[int, bytes, str]:
        runner = _streamed if stream and self.run is _run else self.run
        code, out, err = runner(self.ssh_argv(command), None)
        if code == 255:  # ssh's own failure: not the remote command's
            raise BadInputError(f"cannot reach {self.destination} port {self.port} over ssh: "
                                f"{err.strip() or 'connection failed'} — check the address, "
                                "that sshd runs there, and your key (--ssh-option "
                                "IdentityFile=...)")
        return code, out, err

    def push_dir(self, local: Path, remote: str) -> None:
        code, _, err = self.run(self.ssh_argv(f"mkdir -p {shlex.quote(remote)} && tar -C "
                                              f"{shlex.quote(remote)} -xf -"), _tar(local))
        if code != 0:
            raise BadInputError(f"copying {local} to {self.destination}:{remote} failed: "
                                f"{err.strip()}")

    def fetch(self, remote: str) -> bytes:
        code, out, err = self.run(self.ssh_argv(f"cat {shlex.quote(remote)}"), None)
        if code != 0:
            raise FileNotFoundError(err.strip() or remote)
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "ssh", "address": f"ssh://{self.destination}:{self.port}"}


def _tar(folder: Path) -> bytes:
    """The bundle as a tar stream (without earlier reports)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if rel.parts[0] == "reports" or not path.is_file():
                continue
            tar.add(path, arcname=str(rel))
    return buffer.getvalue()


# --- adb ---------------------------------------------------------------------------------------


def parse_adb_devices(text: str) -> dict[str, str]:
    """``adb devices -l`` -> {serial: state} (device, unauthorized, offline, ...)."""
    devices = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            devices[fields[0]] = fields[1]
    return devices


def parse_dumpsys_battery(text: str) -> dict[str, str]:
    """``adb shell dumpsys battery`` -> its ``key: value`` lines."""
    return {m.group(1).strip(): m.group(2).strip()
            for m in re.finditer(r"^\s*([^:\n]+):\s*(.*)$", text, re.MULTILINE)}


@dataclass
class AdbTarget(Transport):
    serial: str | None = None
    root: str = "/data/local/tmp/edgepet"

    @classmethod
    def parse(cls, spec: str, run: Runner = _run) -> AdbTarget:
        """``adb`` or ``adb:SERIAL``."""
        _, _, serial = spec.partition(":")
        return cls(name="adb", run=run, serial=serial or None)

    def adb(self, *args: str) -> list[str]:
        """An adb command line for this device."""
        return ["adb", *(["-s", self.serial] if self.serial else []), *args]

    def check_device(self) -> None:
        """The phone is attached and authorized (``adb devices -l``)."""
        code, out, err = self.run(["adb", "devices", "-l"], None)
        if code != 0:
            raise BadInputError(f"adb devices failed: {err.strip()}")
        devices = parse_adb_devices(out.decode())
        if self.serial is None:
            ready = [s for s, state in devices.items() if state == "device"]
            if len(ready) != 1:
                raise BadInputError(f"adb sees {len(ready)} ready devices "
                                    f"({', '.join(devices) or 'none'}) — give adb:SERIAL")
            self.serial = ready[0]
        state = devices.get(self.serial)
        if state != "device":
            raise BadInputError(f"adb device {self.serial} is {state or 'not attached'} — "
                                "attach it, enable USB debugging and accept the key prompt")

    def abi(self) -> str:
        _, out, _ = self.shell("getprop ro.product.cpu.abi")
        return out.decode().strip()

    def battery(self) -> dict[str, str]:
        """``dumpsys battery``: on battery when no 'powered' line says true."""
        _, out, _ = self.shell("dumpsys battery")
        return parse_dumpsys_battery(out.decode())

    def shell(self, command: str, stream: bool = False) -> tuple[int, bytes, str]:
        runner = _streamed if stream and self.run is _run else self.run
        return runner(self.adb("shell", command), None)

    def push_dir(self, local: Path, remote: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "bundle.tar"
            staged.write_bytes(_tar(local))
            code, _, err = self.run(self.adb("push", str(staged), f"{remote}.tar"), None)
            if code != 0:
                raise BadInputError(f"adb push failed: {err.strip()}")
        self.shell(f"mkdir -p {remote} && tar -C {remote} -xf {remote}.tar && rm {remote}.tar")

    def fetch(self, remote: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "pulled"
            code, _, err = self.run(self.adb("pull", remote, str(local)), None)
            if code != 0 or not local.exists():
                raise FileNotFoundError(err.strip() or remote)
            return local.read_bytes()

    def describe(self) -> dict[str, Any]:
        return {"kind": "adb", "serial": self.serial}


# --- the remote bench ----------------------------------------------------------------------------


def harness_arguments(options, bundle: str, out: str) -> list[str]:
    """``bench`` flags for the device's harness, from this side's options."""
    argv = ["bench", bundle, "-o", out, "--threads", ",".join(map(str, options.threads)),
            "--warmup", str(options.warmup), "--rounds", str(options.rounds),
            "--delay", str(options.delay), "--energy", options.energy,
            "--idle-seconds", str(options.idle_seconds), "--batch", options.batch,
            "--baselines", ",".join(options.baselines) or "none"]
    argv += ["--runs", str(options.runs)] if options.runs else ["--seconds",
                                                                 str(options.seconds)]
    if options.adapter:
        argv += ["--adapter", options.adapter]
    return argv


def open_transport(device: str, ssh_options: Sequence[str] = ()) -> Transport:
    """The transport ``--device`` names."""
    if device.startswith("ssh://"):
        return SshTarget.parse(device, ssh_options)
    if device == "adb" or device.startswith("adb:"):
        return AdbTarget.parse(device)
    raise BadInputError(f"--device {device!r}: use local, ssh://USER@HOST[:PORT] or "
                        "adb[:SERIAL]")


def bench_remote(options, args, progress: Progress | None = None,
                 transport: Transport | None = None) -> tuple[dict, Path]:
    """Run the bench on the device; write the report here. Returns (report, folder)."""
    from edgepet.device_tests import report as rp
    from edgepet.device_tests.harness import default_output
    from edgepet.runtime import Bundle

    say = progress or (lambda line: None)
    bundle = Bundle.open(options.bundle, check_files=False)
    target = transport or open_transport(options.device, getattr(args, "ssh_option", ()))
    python = getattr(args, "remote_python", "python3")
    if isinstance(target, AdbTarget):
        target.check_device()
        _check_abi(target, bundle)
    code, out, err = target.shell(f"{shlex.quote(python)} -c 'import edgepet.device_tests, "
                                  "platform; print(platform.machine())'")
    if code != 0:
        why = (err or out.decode()).strip()[-200:]
        if getattr(args, "native_runner", None):
            say(f"no edgepet Python on {options.device} ({why}): using edgepet-run")
            return _bench_native(options, args, target, bundle, say)
        raise BadInputError(
            f"no edgepet harness on {options.device}: `{python} -c 'import "
            f"edgepet.device_tests'` failed ({why}) — install edgepet there (pip install "
            "'edgepet[bench]'), name its Python with --remote-python, or give a native "
            "runner built for the device with --native-runner PATH (docs/bench.md)")
    machine = out.decode().strip()
    arch = bundle.manifest["target"]["arch"]
    if machine and {"arm64": "aarch64"}.get(machine, machine) != arch:
        say(f"note: the bundle is for {arch}, the device is {machine}")
    work = _remote_workdir(target)
    try:
        say(f"copying {bundle.path} to {options.device}:{work}/bundle")
        target.push_dir(bundle.path, f"{work}/bundle")
        command = " ".join(shlex.quote(a) for a in (
            python, "-m", "edgepet.device_tests",
            *harness_arguments(options, f"{work}/bundle", f"{work}/report")))
        say(f"running the harness on {options.device}")
        code, _, err = target.shell(command, stream=True)
        try:
            report = json.loads(target.fetch(f"{work}/report/report.json"))
        except (FileNotFoundError, json.JSONDecodeError):
            raise BadInputError(f"the harness on {options.device} wrote no report (exit code "
                                f"{code}{': ' + err.strip() if err else ''})") from None
    finally:
        target.shell(f"rm -rf {shlex.quote(work)}")
    report["device"] = target.describe()
    report["settings"]["device"] = options.device
    local = Path(options.output) if options.output else default_output(options.bundle)
    rp.write_all(report, local)
    if code == 2 and not any(r.get("n_runs") for r in report["results"]):
        raise BadInputError(f"nothing could be measured on {options.device} (report in {local})")
    return report, local


def _bench_native(options, args, target: Transport, bundle, say: Progress) -> tuple[dict, Path]:
    """The device has no Python: time the bundle with edgepet-run (edgepet alone)."""
    import time

    from edgepet.device_tests import native
    from edgepet.device_tests import report as rp
    from edgepet.device_tests.baselines import edgepet_contender
    from edgepet.device_tests.harness import default_output

    started = time.time()
    operator = bundle.manifest["operator"]
    # Before anything is copied: a bundle made for a platform this edgepet could not
    # build for says what it lacks (operator.missing); the device needs exactly that.
    needs = [what for what, have in (("op library", operator.get("library")),
                                     ("edgepet-run", operator.get("runner")
                                      or args.native_runner != "auto")) if not have]
    for what in needs:
        why = missing_native(bundle.manifest, what)
        if why:
            raise BadInputError(f"{why} (needed to run on {options.device} without Python)")
    extra: list[Path] = []  # files pushed to WORK/bin beside the bundle
    if args.native_runner != "auto":
        runner = Path(args.native_runner)
        if not runner.is_file():
            raise BadInputError(f"--native-runner {runner} does not exist")
        extra.append(runner)
    elif not operator.get("runner"):
        extra.append(native.runner_path())  # the bundle is for this machine's platform
    work = _remote_workdir(target)
    executable = (f"{work}/bin/{extra[0].name}" if extra
                  else f"{work}/bundle/{operator['runner']}")
    library = None
    if not operator.get("library"):
        from edgepet.runtime import op_library_path

        extra.append(Path(op_library_path()))  # the device is this machine's kind
        library = f"{work}/bin/{extra[-1].name}"
    results, unmeasured = [], [{"what": "baselines", "why": (
        "the device has no Python with edgepet: edgepet-run times edgepet alone — install "
        "edgepet there for the ONNX Runtime and LiteRT baselines")}]
    try:
        say(f"copying {bundle.path}{''.join(' and ' + f.name for f in extra)} to "
            f"{options.device}:{work}")
        target.push_dir(bundle.path, f"{work}/bundle")
        if extra:
            with tempfile.TemporaryDirectory() as tmp:
                for file in extra:
                    (Path(tmp) / file.name).write_bytes(file.read_bytes())
                    (Path(tmp) / file.name).chmod(0o755)
                target.push_dir(Path(tmp), f"{work}/bin")
        environment = _remote_environment(target)
        per_round = max(1, -(-(options.runs or 20) // options.rounds))
        for threads in options.threads:
            rounds = []
            for _ in range(options.rounds):
                argv = [executable, f"{work}/bundle", "--threads", str(threads),
                        "--runs", str(per_round), "--warmup", str(options.warmup),
                        "--batch", options.batch]
                if library:
                    argv += ["--op-library", library]
                if getattr(args, "remote_onnxruntime", None):
                    argv += ["--onnxruntime", args.remote_onnxruntime]
                if options.adapter:
                    argv += ["--adapter", options.adapter]
                say(f"edgepet-run threads={threads}")
                code, out, err = target.shell(" ".join(shlex.quote(a) for a in argv))
                if code == 2 or not out.strip():
                    raise BadInputError(f"edgepet-run failed on {options.device}: "
                                        f"{err.strip() or out.decode().strip()}")
                got = json.loads(out)
                environment["versions"]["onnxruntime"] = got["onnxruntime"]
                rounds.append({**got, "rss_before_load_bytes": None, "energy": None})
            results.append(rp.merge_rounds("edgepet", threads, rounds, None))
    finally:
        target.shell(f"rm -rf {shlex.quote(work)}")
    contender = edgepet_contender(bundle, options.adapter)
    contender.description += " — timed by edgepet-run (no Python on the device)"
    unmeasured.append({"what": "energy", "why": "edgepet-run reads no energy meter"})
    report = rp.build_report(
        bundle=bundle, contenders=[contender], results=results,
        settings={**options.settings(), "runs": per_round * options.rounds, "seconds": None,
                  "device": options.device, "runner": "edgepet-run"},
        environment=environment,
        energy_meter={"name": None, "status": "unavailable",
                      "reason": "edgepet-run reads no energy meter"},
        unmeasured=unmeasured, interrupted=False, started=started)
    report["device"] = target.describe()
    local = Path(options.output) if options.output else default_output(options.bundle)
    rp.write_all(report, local)
    return report, local


_ENV_SCRIPT = ("uname -m; uname -sr; getconf _NPROCESSORS_ONLN; "
               "grep -m1 -E '^(model name|Model|Hardware)' /proc/cpuinfo; "
               "grep -m1 -E '^(flags|Features)' /proc/cpuinfo; cat /proc/loadavg")


def _remote_environment(target: Transport) -> dict[str, Any]:
    """What a device without Python can tell about itself (uname, /proc)."""
    _, out, _ = target.shell(_ENV_SCRIPT)
    lines = out.decode().splitlines() + [""] * 6
    load = [float(x) for x in lines[5].split()[:3]] if lines[5].strip() else None
    state = {"clocks": {"governor": None, "frequency_mhz": None,
                        "why_missing": "not read without Python"},
             "temperature_c": None, "load_average": load}
    return {"cpu_info": lines[3].partition(":")[2].strip() or lines[0], "arch": lines[0],
            "isa_features": lines[4].partition(":")[2].split(),
            "n_cpus": int(lines[2]) if lines[2].strip().isdigit() else None,
            "os": lines[1], "os_version": "", "hostname": "",
            "versions": {"edgepet": None, "onnxruntime": None, "op_abi_version": None,
                         "runner": "edgepet-run"},
            "before": state, "after": state}


def _remote_workdir(target: Transport) -> str:
    if isinstance(target, AdbTarget):
        target.shell(f"mkdir -p {target.root}")
        return f"{target.root}/run"
    code, out, err = target.shell("mktemp -d /tmp/edgepet-bench.XXXXXX")
    if code != 0:
        raise BadInputError(f"cannot make a work folder on the device: {err.strip()}")
    return out.decode().strip()


def _check_abi(target: AdbTarget, bundle) -> None:
    abi = target.abi()
    arch = bundle.manifest["target"]["arch"]
    if _ABIS.get(abi, abi) != arch:
        raise BadInputError(f"the bundle was made for {bundle.target} ({arch}); the phone is "
                            f"{abi} — export for android-arm64")
    power = target.battery()
    plugged = [k for k in ("AC powered", "USB powered", "Wireless powered")
               if power.get(k) == "true"]
    if plugged:
        print(f"note: the phone is {', '.join(plugged)}: android-battery energy will be "
              "unavailable (unplug it for energy figures)", file=sys.stderr)


__all__ = ["AdbTarget", "SshTarget", "bench_remote", "harness_arguments", "open_transport",
           "parse_adb_devices", "parse_dumpsys_battery"]
