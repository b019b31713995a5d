"""A model file from someone else runs no code unless the user says ``--trust``.

Each hostile ``.pt2`` below is a real ``torch.export.save`` archive with one part swapped
for a pickle whose loading creates a marker file. ``torch.export.load`` alone creates it
(the control tests show the payloads are live); ``edgepet export`` without ``--trust``
must refuse the file with exit code 2 and leave no marker.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from edgepet.exporters import examples  # noqa: E402


class _CreatesFile:
    """Unpickling this opens (creates) ``marker``: a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_CreatesFile(marker), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def program_file(tmp_path_factory) -> Path:
    model = examples.TinyMLP().eval()
    path = tmp_path_factory.mktemp("pt2") / "mlp.pt2"
    torch.export.save(torch.export.export(model, model.example_inputs()), str(path))
    return path


def _rewrite(source: Path, target: Path, change, extra=None, extra_first=False) -> Path:
    """Copy a .pt2 archive with ``change(entries)`` applied (names relative to its root);
    ``extra(root, entries)``: (name, data) pairs written as they are, before the archive's
    own parts (``extra_first``) or after them."""
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0]
        entries = {n.split("/", 1)[1]: archive.read(n) for n in names}
    change(entries)
    own = [(f"{root}/{name}", data) for name, data in entries.items()]
    added = list(extra(root, entries)) if extra else []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point
        for name, data in (added + own if extra_first else own + added):
            archive.writestr(name, data)
    return target


def _config(entries, kind):
    return json.loads(entries[f"data/{kind}/model_{kind}_config.json"])


def _set_config(entries, kind, config):
    entries[f"data/{kind}/model_{kind}_config.json"] = json.dumps(config).encode()


def _pickled_sample_inputs(entries, marker):
    entries["data/sample_inputs/model.pt"] = _torch_pickle(marker)


def _pickled_weight(entries, marker):
    config = _config(entries, "weights")
    meta = config["config"]["fc1.bias"]
    meta["use_pickle"] = True
    entries[f"data/weights/{meta['path_name']}"] = _torch_pickle(marker)
    _set_config(entries, "weights", config)


def _pickled_constant(entries, marker):
    config = _config(entries, "constants")
    config["config"]["evil"] = {"path_name": "tensor_9", "is_param": False,
                                "use_pickle": True, "tensor_meta": None}
    entries["data/constants/tensor_9"] = _torch_pickle(marker)
    _set_config(entries, "constants", config)


def _opaque_object(entries, marker):
    config = _config(entries, "constants")
    config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                "use_pickle": True, "tensor_meta": None}
    entries["data/constants/opaque_obj_0"] = pickle.dumps(_CreatesFile(marker))
    _set_config(entries, "constants", config)


def _legacy_weights(entries, marker):
    entries["data/weights/model.pt"] = _torch_pickle(marker)


def _native_code(entries, marker):
    entries["data/aotinductor/model/model.so"] = b"\x7fELF not really"


ATTACKS = {
    "pickled sample inputs": _pickled_sample_inputs,
    "pickled weight": _pickled_weight,
    "pickled tensor constant": _pickled_constant,
    "opaque object constant": _opaque_object,
    "legacy pickled weights": _legacy_weights,
    "AOTInductor native code": _native_code,
}
#: Attacks whose payload torch.export.load runs on its own (the controls).
LIVE = ["pickled sample inputs", "pickled weight", "pickled tensor constant",
        "opaque object constant", "legacy pickled weights"]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_pt2_is_refused_without_trust_and_runs_nothing(
        cli, no_partial_output, program_file, tmp_path, attack):
    marker = tmp_path / "PWNED"
    evil = _rewrite(program_file, tmp_path / "evil.pt2", lambda e: ATTACKS[attack](e, marker))
    out = tmp_path / "out"
    code, _, stderr = cli("export", evil, "-o", out, "--target", "x86-avx2", "--quiet")
    assert code == 2, stderr
    assert "--trust" in stderr and str(evil) in stderr
    assert not marker.exists()
    assert no_partial_output(out)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("layout", ["a part named twice", "a second root folder"])
def test_archives_two_zip_readers_could_read_differently_are_refused(
        cli, program_file, tmp_path, layout, first):
    marker = tmp_path / "PWNED"

    def extra(root, entries):
        config = _config(entries, "weights")
        config["config"]["fc1.bias"]["use_pickle"] = True
        weight = config["config"]["fc1.bias"]["path_name"]
        folder = root if layout == "a part named twice" else "other"
        return [(f"{folder}/data/weights/model_weights_config.json",
                 json.dumps(config).encode()),
                (f"{folder}/data/weights/{weight}", _torch_pickle(marker))]

    evil = _rewrite(program_file, tmp_path / "evil.pt2", lambda e: None, extra, first)
    code, _, stderr = cli("export", evil, "-o", tmp_path / "out", "--quiet")
    assert code == 2 and "--trust" in stderr
    assert not marker.exists()


@pytest.mark.parametrize("attack", LIVE)
def test_the_payloads_are_live_for_torch_export_load(program_file, tmp_path, attack):
    """The control: torch.export.load unpickles each of them and creates the marker."""
    marker = tmp_path / "PWNED"
    evil = _rewrite(program_file, tmp_path / "evil.pt2", lambda e: ATTACKS[attack](e, marker))
    try:
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001, S110 — most fail after the payload ran; that is the point
        pass
    assert marker.exists()


def test_trust_lets_the_pickled_parts_load(cli, program_file, tmp_path):
    marker = tmp_path / "PWNED"
    evil = _rewrite(program_file, tmp_path / "evil.pt2",
                    lambda e: _pickled_sample_inputs(e, marker))
    code, _, stderr = cli("export", evil, "-o", tmp_path / "out", "--quiet", "--trust")
    assert marker.exists()  # --trust means what it says
    assert code == 2 and "Traceback" not in stderr


def test_a_plain_pt2_still_exports_without_trust(cli, program_file, tmp_path):
    copy = _rewrite(program_file, tmp_path / "plain.pt2", lambda e: None)
    code, _, stderr = cli("export", copy, "-o", tmp_path / "out", "--target", "x86-avx2",
                          "--quiet")
    assert code == 0, stderr


def test_a_graph_may_call_only_torch_operators(program_file):
    """torch's verifier refuses most non-operator targets; edgepet checks again before it
    runs the program for reference outputs."""
    import operator

    from edgepet.exporters.torch_export import BadInputError, _check_graph_calls

    program = torch.export.load(str(program_file))
    _check_graph_calls(program, program_file)
    node = next(n for n in program.graph.nodes if n.op == "call_function")
    node.target = operator.attrgetter
    with pytest.raises(BadInputError, match="attrgetter"):
        _check_graph_calls(program, program_file)


def test_torch_logging_stays_off_the_terminal(program_file, tmp_path):
    """A .pt2 torch cannot deserialize makes torch log a traceback as a warning; the user
    sees one edgepet line instead."""

    def unknown_operator(entries):
        model = json.loads(entries["models/model.json"])
        model["graph_module"]["graph"]["nodes"][1]["target"] = "builtins.exec"
        entries["models/model.json"] = json.dumps(model).encode()

    bad = _rewrite(program_file, tmp_path / "bad.pt2", unknown_operator)
    result = subprocess.run(
        [sys.executable, "-m", "edgepet.cli", "export", str(bad), "-o", str(tmp_path / "o"),
         "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepet export: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_pt2_graph_may_not_reach_the_file_system(program_file):
    from edgepet.exporters.torch_export import BadInputError, _check_graph_calls

    program = torch.export.load(str(program_file))
    node = next(n for n in program.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.from_file.default
    with pytest.raises(BadInputError, match="aten::from_file.*file system"):
        _check_graph_calls(program, program_file)


# --- TorchScript: its code runs when edgepet runs the model, and __setstate__ on load ------


class _SavesInForward(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        torch.save(x, self.marker)
        return self.lin(x)


class _ReadsInForward(torch.nn.Module):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def forward(self, x):
        return x + torch.from_file(self.secret, False, 4, dtype=torch.uint8).float().sum()


class _SavesOnLoad(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return x * 2.0

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        torch.save(torch.ones(1), state[0])
        self.marker = state[0]
        self.training = state[1]


@pytest.fixture()
def hostile_scripts(tmp_path):
    """(name, saved TorchScript file, marker it creates when its code runs)."""
    marker = tmp_path / "marker.pt"
    secret = tmp_path / "secret.txt"
    secret.write_text("key=1234")
    files = []
    for name, module in (("saves-in-forward", _SavesInForward(str(marker))),
                         ("reads-in-forward", _ReadsInForward(str(secret))),
                         ("saves-on-load", _SavesOnLoad(str(marker)))):
        path = tmp_path / f"{name}.pt"
        torch.jit.script(module).save(str(path))
        files.append((name, path))
    marker.unlink(missing_ok=True)  # saving __getstate__'s module does not run setstate
    return files, marker


def test_the_torchscript_payloads_are_live(hostile_scripts):
    files, marker = hostile_scripts
    paths = dict(files)
    torch.jit.load(str(paths["saves-on-load"]))
    assert marker.exists()
    marker.unlink()
    torch.jit.load(str(paths["saves-in-forward"]))(torch.ones(1, 4))
    assert marker.exists()
    assert float(torch.jit.load(str(paths["reads-in-forward"]))(torch.zeros(1))) > 0


def test_hostile_torchscript_is_refused_without_trust_and_runs_nothing(cli, hostile_scripts,
                                                                        tmp_path):
    files, marker = hostile_scripts
    says = {"saves-in-forward": "aten::save", "reads-in-forward": "aten::from_file",
            "saves-on-load": "__setstate__"}
    for name, path in files:
        out = tmp_path / f"out-{name}"
        code, _, err = cli("export", path, "--input-shape", "1,4", "-o", out, "--quiet")
        assert code == 2 and says[name] in err and "--trust" in err, (name, err)
        assert not marker.exists() and not out.exists(), name


def test_a_plain_torchscript_still_exports_without_trust(cli, tmp_path):
    path = tmp_path / "mlp.pt"
    model = examples.TinyMLP().eval()
    torch.jit.script(model).save(str(path))
    code, _, err = cli("export", path, "-o", tmp_path / "out", "--target", "x86-avx2",
                       "--quiet")
    assert code == 0, err
