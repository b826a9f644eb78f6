"""The adapter contract's facts, as the runner and the interfaces read them: `min_version` (through
packaging), `requires_calibration` / `calibration_corpus`, and the `codes` hook's refusal."""

import importlib.metadata

import pytest
import torch

from quantbench.backends.base import Backend, older_than
from quantbench.backends.bnb import BnbBackend
from quantbench.backends.registry import BACKENDS, get_backend, method_facts
from quantbench.backends.torchao import TorchaoBackend
from quantbench.errors import QuantbenchError
from quantbench.runner.trial import plan_trial, prepare_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef


def installed_as(monkeypatch, distribution: str, version: str) -> None:
    """Make importlib.metadata report `version` for `distribution` (the others keep theirs)."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == distribution else real(name))


def test_installed_release_older_than_min_version_is_unavailable_with_the_reason(monkeypatch):
    installed_as(monkeypatch, "bitsandbytes", "0.44.0")
    availability = BnbBackend().check("cpu")
    assert not availability.ok
    assert availability.reason == (
        "bitsandbytes 0.44.0 is older than the 0.46.1 this adapter needs (pip install -U 'bitsandbytes>=0.46.1')"
    )


@pytest.mark.parametrize("version", ["0.46.1", "0.46.1+cpu", "0.46.1.dev3", "0.47.0rc1", "1.0"])
def test_releases_at_or_past_min_version_pass(monkeypatch, version):
    """Compared as PEP 440 versions: the hand parsing this replaces read "0.46.1.dev3" and "1.0"
    digit by digit; local (+cpu) and pre-release tags of the minimum itself count as the minimum."""
    installed_as(monkeypatch, "bitsandbytes", version)
    assert BnbBackend().check("cpu").ok


def test_a_version_that_is_not_pep_440_says_so(monkeypatch):
    installed_as(monkeypatch, "bitsandbytes", "custom-build")
    availability = BnbBackend().check("cpu")
    assert not availability.ok
    assert availability.reason == (
        "bitsandbytes reports version 'custom-build', not a PEP 440 version; 0.46.1 or newer is needed"
    )


def test_torchao_needs_torch_2_11(monkeypatch):
    pytest.importorskip("torchao")
    monkeypatch.setattr(torch, "__version__", "2.10.0+cpu")
    assert TorchaoBackend().check("cpu").reason == (
        "torch 2.10.0+cpu is older than the 2.11 this adapter needs (pip install -U 'torch>=2.11')"
    )
    monkeypatch.setattr(torch, "__version__", "2.11.0a0+git1234")
    assert TorchaoBackend().check("cpu").ok


def test_older_than_compares_numerically():
    assert older_than("x", "0.9.0", "0.10").startswith("x 0.9.0 is older than the 0.10 this adapter needs")
    assert older_than("x", "0.10.0", "0.9") == ""


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_method_that_requires_calibration_names_its_corpus(name):
    backend = get_backend(name)
    if backend.requires_calibration:
        assert backend.Params.model_fields["calibration"].default == "builtin"
        assert backend.calibration_corpus(backend.Params()) == "builtin"


@pytest.mark.parametrize(
    ("method", "corpus"),
    [
        ("gptq", "builtin"),
        ("awq:calibration=notes.txt", "notes.txt"),
        ("rtn", None),
        ("quanto", None),  # weight-only: no text
        ("quanto:activations=int8,calibration=notes.txt", "notes.txt"),
        ("triton:source=gptq", "builtin"),  # GPTQ's own default calibration
        ("triton:source=hqq", None),
    ],
)
def test_calibration_corpus(method, corpus):
    spec = MethodSpec.parse(method)
    backend = get_backend(spec.name)
    assert backend.calibration_corpus(backend.Params.model_validate(spec.params)) == corpus


def test_runner_reads_the_calibration_corpus_before_the_trial(tiny_model_dir, tmp_path):
    """A corpus that does not exist fails while the trial is prepared, in one line, for a method
    that calibrates; a method that does not is not given one."""
    model = ModelRef(str(tiny_model_dir))
    evals = [EvalSpec("memory", {"checkpoint": False})]
    missing = str(tmp_path / "missing.txt")
    spec = plan_trial(model, MethodSpec.parse(f"quanto:activations=int8,calibration={missing}"), evals)
    with pytest.raises(QuantbenchError, match=r"^corpus '.*missing\.txt' not found") as err:
        prepare_trial(spec, tmp_path / "store")
    assert "\n" not in str(err.value)
    calibrated = prepare_trial(plan_trial(model, MethodSpec.parse("triton:source=gptq"), evals), tmp_path / "store")
    assert calibrated.calibration is not None and calibrated.calibration.name == "builtin"
    assert prepare_trial(plan_trial(model, MethodSpec.parse("rtn"), evals), tmp_path / "store").calibration is None


def test_method_facts_line():
    assert method_facts(get_backend("gptq")) == "calibrates on text (calibration=...); saves its quantized checkpoint"
    assert method_facts(get_backend("rtn")) == "no calibration text; cannot save its quantized model"


@pytest.mark.parametrize("name", ["bnb", "torchao", "quanto", "baseline"])
def test_methods_without_codes_refuse_in_one_line(resolved, name):
    with pytest.raises(QuantbenchError, match=rf"^{name} cannot give its codes in the packed format$"):
        get_backend(name).codes(resolved, {}, bits=4, group_size=64, symmetric=False, device="cpu")


def test_triton_sources_are_the_methods_that_give_codes():
    """Every source triton accepts overrides the hook; no other method does."""
    sources = set(get_backend("triton").Params.model_fields["source"].annotation.__args__)
    overriding = {name for name in BACKENDS if type(get_backend(name)).codes is not Backend.codes}
    assert sources == overriding == {"rtn", "hqq", "gptq", "awq"}
