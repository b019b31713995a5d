"""Bundles for the harness tests, exported once per session (export needs torch)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("edgepet._native", reason="the native build (pip install .) is needed")


@pytest.fixture(scope="session")
def demo_bundle(bundles):
    """The built-in Llama-style example at 4 bits, for this machine."""
    return bundles.example("llama", bits="4")


@pytest.fixture(scope="session")
def adapter_bundle(tmp_path_factory):
    """A 4-bit MLP with two switchable 1-bit adapter tasks, "a" and "b"."""
    torch = pytest.importorskip("torch")
    from edgepet import pet
    from edgepet.exporters import examples
    from edgepet.exporters.pipeline import export

    base = examples.TinyMLP().eval()
    tuned = copy.deepcopy(base)
    pet.apply(tuned, "adapter", target_modules=["fc1", "fc2"], r=8, bits=1)
    tasks = {}
    for name, seed in (("a", 3), ("b", 4)):
        model = copy.deepcopy(tuned)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:  # pet.apply freezes the base; these are the adapter's
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        pet.binarize(model)
        tasks[name] = model.eval()
    out = tmp_path_factory.mktemp("adapter-bundle") / "bundle"
    return export(tasks["a"], out, target="x86-avx2", bits=4, adapters=tasks)


@pytest.fixture
def quick(tmp_path):
    """BenchOptions for a fast run: few runs, no delays, no meter idle time."""
    from edgepet.device_tests.harness import BenchOptions

    def make(bundle, **changes):
        options = BenchOptions(bundle=str(bundle.path if hasattr(bundle, "path") else bundle),
                               threads=[1], runs=4, seconds=None, warmup=1, rounds=2,
                               delay=0.0, energy="none", output=str(tmp_path / "report"))
        for key, value in changes.items():
            setattr(options, key, value)
        return options

    return make

