"""A store written by an earlier quantbench (tests/fixtures/store-v1, by the code of 19dbee3 from
tests/fixtures/store-v1.yaml) still reads, resumes and shows the same labels: users keep their
stores for months, and a renamed parameter must not orphan their trials."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from quantbench.backends.registry import method_label
from quantbench.results.query import query, trial_bits, wide
from quantbench.results.store import read_results
from quantbench.runner.sweep import load_sweep
from quantbench.runner.trial import completed_keys, plan_trial

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORE = FIXTURES / "store-v1"

# trial key -> (label, nominal bits) as the store-v1 code wrote and showed them
WRITTEN = {
    "efd7746be6aaf520": ("baseline:dtype=float32", 32.0),
    "1d1d1f8b9a848d69": ("rtn:bits=4,group_size=64", 4.0),
    "a929eae65de8ea2c": ("rtn:bits=3,group_size=64,symmetric=True", 3.0),
    "1629409813d0091c": ("bnb:bits=4", 4.0),
    "a0be546953c922b6": ("torchao:bits=8", 8.0),
    "c346aae653a539db": ("quanto:weights=int8", 8.0),
    "3a7c6648a26b070b": ("hqq:group_size=64,nbits=4", 4.0),
}
LABELS = {key: label for key, (label, _) in WRITTEN.items()}


@pytest.fixture(scope="module")
def planned() -> list:
    return load_sweep(FIXTURES / "store-v1.yaml")[1]


def test_old_store_reads_with_its_labels_and_bits() -> None:
    contents = read_results(STORE)
    assert contents.skipped == []
    trials = contents.frame.drop_duplicates("trial_key").set_index("trial_key")
    assert dict(trials["method_label"]) == LABELS
    assert set(trials["status"]) == {"ok"}
    table = wide(query(STORE).frame).set_index("trial_key")
    assert dict(table["method_label"]) == LABELS
    bits = trial_bits(contents.frame)
    for key, (_, expected) in WRITTEN.items():
        assert math.isclose(bits[key], expected), key


def test_old_sweep_resumes_on_the_same_trial_keys(planned: list) -> None:
    done = completed_keys(STORE)
    assert {spec.key for spec in planned} == set(WRITTEN) == done


@pytest.mark.parametrize("key", sorted(WRITTEN))
def test_labels_recomputed_from_the_stored_spec_match(key: str, planned: list) -> None:
    spec = next(s for s in planned if s.key == key)
    replanned = plan_trial(spec.model, spec.method, list(spec.evals), spec.device)
    assert replanned.key == key
    assert method_label(spec.method) == LABELS[key]
