"""The environment record of a bench report: the transparent huge page mode."""
from edgepet.device_tests import environment


def test_transparent_hugepages_reads_the_selected_mode(monkeypatch):
    monkeypatch.setattr(environment, "_read", lambda path: "always [madvise] never")
    assert environment.transparent_hugepages() == "madvise"
    monkeypatch.setattr(environment, "_read", lambda path: "[never] madvise always")
    assert environment.transparent_hugepages() == "never"


def test_transparent_hugepages_is_none_without_the_file(monkeypatch):
    monkeypatch.setattr(environment, "_read", lambda path: None)
    assert environment.transparent_hugepages() is None


def test_the_environment_record_carries_it():
    record = environment.describe()
    assert record["transparent_hugepages"] == environment.transparent_hugepages()
