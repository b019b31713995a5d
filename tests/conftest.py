"""Shared fixtures: example bundles, and where tests find toolchains and ONNX Runtime pieces."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "build" / "tools"


@pytest.fixture
def ort_headers() -> Path:
    """ONNX Runtime's C headers: the ones the build fetched, or a system install."""
    candidates = [Path(os.environ["EDGEPET_ORT_INCLUDE_DIR"])] if os.environ.get(
        "EDGEPET_ORT_INCLUDE_DIR") else []
    candidates += sorted(ROOT.glob("build/*/_onnxruntime_headers/root/usr/include/onnxruntime"))
    candidates += [Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]
    for folder in candidates:
        if (folder / "onnxruntime_c_api.h").is_file():
            return folder
    pytest.skip("ONNX Runtime headers not found (build the package first)")


@pytest.fixture
def aarch64_tools() -> dict[str, Path]:
    """Cross compiler, qemu-aarch64 and ONNX Runtime's aarch64 library
    (scripts/aarch64-tools.sh fetches them)."""
    qemu = os.environ.get("EDGEPET_QEMU_AARCH64") or str(TOOLS / "qemu/usr/bin/qemu-aarch64")
    ort = os.environ.get("EDGEPET_ORT_AARCH64_LIB_DIR") or str(
        TOOLS / "onnxruntime-aarch64/lib")
    missing = [what for what, ok in [
        ("aarch64-linux-gnu-g++", shutil.which("aarch64-linux-gnu-g++")),
        ("qemu-aarch64", Path(qemu).is_file()),
        ("ONNX Runtime for aarch64", (Path(ort) / "libonnxruntime.so.1").exists()),
        ("cmake", shutil.which("cmake")),
    ] if not ok]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run scripts/aarch64-tools.sh")
    return {"qemu": Path(qemu), "ort_lib": Path(ort), "sysroot": Path("/usr/aarch64-linux-gnu")}


@pytest.fixture
def aarch64_run():
    """Runs an aarch64 program under qemu: ``aarch64_run(tools, program, *args)``."""

    def run(tools, program, *args, timeout=300):
        command = [str(tools["qemu"]), "-L", str(tools["sysroot"]),
                   "-E", f"LD_LIBRARY_PATH={tools['ort_lib']}", str(program)]
        return subprocess.run(command + [str(a) for a in args], capture_output=True,
                              text=True, timeout=timeout)

    return run


@pytest.fixture
def aarch64_c_app(tmp_path, aarch64_tools, ort_headers, aarch64_run):
    """examples/c_app/run_model.c built for aarch64 against ONNX Runtime's aarch64
    library; call it with ``(op_library, model, *dims)`` to run it under qemu."""
    app = tmp_path / "run_model_aarch64"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-O1", "-o", str(app),
         str(ROOT / "examples/c_app/run_model.c"), f"-I{ort_headers}",
         f"-L{aarch64_tools['ort_lib']}", "-lonnxruntime", "-lm"],
        check=True, capture_output=True,
    )
    return lambda library, model, *dims: aarch64_run(aarch64_tools, app, library, model, *dims)


class BundleCache:
    """Exports each (example, bits) once; tests that only read a bundle share it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundles: dict[tuple, object] = {}

    def example(self, name: str, bits="4", **options):
        from edgepet.exporters.pipeline import export

        key = (name, str(bits), tuple(sorted(options.items())))
        if key not in self.bundles:
            out = self.root / f"{name}-{bits}-{len(self.bundles)}"
            self.bundles[key] = export(f"example:{name}", out, target="x86-avx2",
                                       bits=bits, **options)
        return self.bundles[key]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> BundleCache:
    """Example bundles, exported once per session (needs torch and the native build)."""
    pytest.importorskip("torch")
    pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")
    return BundleCache(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit code, stdout, stderr)`` of the ``edgepet`` command, in-process."""
    from edgepet.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def no_partial_output():
    """``no_partial_output(out)``: neither the bundle nor a staging folder was left behind."""

    def check(out: Path) -> bool:
        leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        return not out.exists() and not leftovers

    return check
