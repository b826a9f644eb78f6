"""Every method describes its parameters once, under the shared names, and the names stores were
written with stay accepted: both spellings give one trial key, one label and one record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbench.backends.registry import BACKENDS, get_backend, method_label, stored_params
from quantbench.planner.formats import plan_methods
from quantbench.runner.sweep import load_sweep
from quantbench.runner.trial import plan_trial
from quantbench.spec import MethodSpec

STORE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1.yaml"
# Spellings the shared names replaced, which must not reappear as field names.
OLD_NAMES = {"nbits", "sym", "dtype"}


@pytest.fixture(scope="module")
def v1_trial():
    """The store-v1 sweep's model, evals and device, for planning trials under its keys."""
    spec = load_sweep(STORE_V1)[1][0]
    return lambda method, params: plan_trial(spec.model, MethodSpec(method, params), list(spec.evals), spec.device)


@pytest.mark.parametrize(
    ("method", "shared", "stored", "key", "label"),
    [
        # in the store-v1 fixture, as its trials were keyed and labelled
        ("hqq", {"bits": 4, "group_size": 64}, {"nbits": 4, "group_size": 64}, "3a7c6648a26b070b",
         "hqq:group_size=64,nbits=4"),
        ("baseline", {"compute_dtype": "float32"}, {"dtype": "float32"}, "efd7746be6aaf520", "baseline:dtype=float32"),
        # renamed fields at values other than their defaults, so they reach the key
        ("hqq", {"bits": 3}, {"nbits": 3}, None, "hqq:group_size=64,nbits=3"),
        ("baseline", {"compute_dtype": "bfloat16"}, {"dtype": "bfloat16"}, None, "baseline:dtype=bfloat16"),
        ("rtn", {"compute_dtype": "float16"}, {"dtype": "float16"}, None, "rtn:bits=4,dtype=float16,group_size=64"),
        ("triton", {"compute_dtype": "float32"}, {"dtype": "float32"}, None,
         "triton:bits=4,dtype=float32,group_size=64,source=rtn"),
        ("gptq", {"symmetric": False}, {"sym": False}, None, "gptq:bits=4,group_size=64,sym=False"),
    ],
)  # fmt: skip
def test_both_spellings_give_one_key_and_label(v1_trial, method, shared, stored, key, label):
    new, old = v1_trial(method, shared), v1_trial(method, stored)
    assert new.key == old.key
    assert new.method.params == old.method.params  # the canonical record keeps the stored spelling
    assert method_label(new.method) == method_label(old.method) == label
    assert method_label(MethodSpec(method, shared)) == label  # a form's raw field names label the same
    if key is not None:
        assert new.key == key


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_parameters_are_described_under_shared_names(name):
    fields = get_backend(name).Params.model_fields
    assert not OLD_NAMES & set(fields)
    assert [f for f, info in fields.items() if not info.description] == []


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_full_record_reads_back(name):
    """params_json records every field, defaults too, under the stored spelling; reading it back
    gives the same parameters, even where a cross-field check rejects options given by hand."""
    params = get_backend(name).Params()
    record = json.loads(json.dumps(params.model_dump(mode="json")))
    assert stored_params(name, record) == params


def test_every_builtin_method_has_a_layout_to_plan_with():
    assert set(plan_methods()) == set(BACKENDS)


@pytest.mark.parametrize(
    ("method", "params", "bits"),
    [("quanto", {"weights": "int4"}, 4), ("quanto", {"weights": "float8"}, 8), ("baseline", {"dtype": "bfloat16"}, 16)],
)
def test_methods_that_name_their_width_otherwise_still_have_bits(method, params, bits):
    assert stored_params(method, params).bits == bits
