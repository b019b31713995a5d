"""The on-device harness behind ``edgepet bench`` (docs/bench.md).

It runs where the bundle will run and needs only numpy, onnxruntime and edgepet's op
library there (``edgepet.runtime``; never torch or the exporters):

- ``harness``: baselines, interleaved rounds, one worker process per configuration;
- ``worker``: one configuration: load, first run, timed runs, memory, energy, accuracy;
- ``baselines``: ort-fp32, ort-nbits4/2 (ONNX Runtime's MatMulNBitsQuantizer), litert;
- ``energy``: RAPL, Raspberry Pi 5 PMIC, Android battery, macOS powermetrics, CSV logs;
- ``environment``: CPU, ISA, clocks, temperatures, versions;
- ``report`` / ``html``: report.json (``report.schema.json``), report.md, report.html;
- ``remote``: ssh:// and adb devices; ``suites``: per-device floors (``suites/*.toml``);
- ``native``: ``edgepet-run``, the C++ runner for devices without Python.
"""

import importlib

_SUBMODULES = ("baselines", "energy", "environment", "harness", "html", "native", "remote",
               "report", "suites", "worker")

__all__ = list(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"edgepet.device_tests.{name}")
    raise AttributeError(f"module 'edgepet.device_tests' has no attribute {name!r}")
