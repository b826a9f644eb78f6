"""Property-based tests (hypothesis): the sweep-file parser, method parameter validation and the
packing round trip, over inputs nobody would write by hand. Bounded (max_examples, no deadline)
so the module runs in seconds."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantbench.backends.registry import BACKENDS, get_backend
from quantbench.errors import QuantbenchError
from quantbench.kernels import format as packing
from quantbench.runner.sweep import load_sweep
from quantbench.spec import MethodSpec, validate_params

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- sweep files ------------------------------------------------------------------------------

# Methods whose parameters the strategy knows, as (name, params) with every value valid.
rtn_params = st.fixed_dictionaries(
    {},
    optional={
        "bits": st.integers(2, 8),
        "group_size": st.sampled_from([-1, 16, 32, 64, 128]),
        "symmetric": st.booleans(),
        "dtype": st.sampled_from(["float32", "bfloat16", "float16"]),
    },
)
baseline_params = st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["float32", "bfloat16", "float16"])})
methods = st.one_of(st.tuples(st.just("rtn"), rtn_params), st.tuples(st.just("baseline"), baseline_params))


def meaning(method: tuple[str, dict[str, Any]]) -> tuple:
    """What a method means: its parameters with defaults filled in (two spellings, one meaning)."""
    name, params = method
    return name, tuple(sorted(get_backend(name).Params.model_validate(params).model_dump().items()))


def written(method: tuple[str, dict[str, Any]], as_string: bool) -> str | dict:
    """A method as a sweep file may write it: `name:k=v,...` or `{name: ..., params: {...}}`."""
    name, params = method
    if not as_string:
        return {"name": name, "params": params}
    values = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    return name + (":" + ",".join(f"{k}={v}" for k, v in values.items()) if values else "")


valid_sweeps = st.fixed_dictionaries(
    {
        "models": st.lists(st.text("abcdefghij-/._0123456789", min_size=1, max_size=12), min_size=1, max_size=3,
                           unique=True),
        "methods": st.lists(methods, min_size=1, max_size=4, unique_by=meaning),
        "styles": st.lists(st.booleans(), min_size=4, max_size=4),
        "repeats": st.integers(1, 3),
        "seq_len": st.integers(2, 4096),
    }
)  # fmt: skip


def sweep_text(draw: dict, styles: list[bool], flow: bool) -> str:
    document = {
        "models": draw["models"],
        "methods": [written(m, s) for m, s in zip(draw["methods"], styles, strict=False)],
        "evals": {"perplexity": {"seq_len": draw["seq_len"], "max_tokens": 64}},
        "repeats": draw["repeats"],
    }
    return yaml.safe_dump(document, default_flow_style=flow, sort_keys=flow)


def load_text(text: str | bytes) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return load_sweep(path)


@BOUNDED
@given(valid_sweeps, st.lists(st.booleans(), min_size=4, max_size=4))
def test_valid_sweeps_plan_the_whole_product_with_stable_keys(draw, other_styles):
    _, specs = load_text(sweep_text(draw, draw["styles"], flow=False))
    n_models, n_methods, repeats = len(draw["models"]), len(draw["methods"]), draw["repeats"]
    assert len(specs) == n_models * n_methods * repeats
    assert len({s.key for s in specs}) == len(specs)  # distinct meanings, distinct keys
    # The same sweep written differently (flow style, sorted keys, methods spelled the other way)
    # plans the same trials under the same keys: a resume never re-runs a finished trial.
    _, again = load_text(sweep_text(draw, other_styles, flow=True))
    assert [s.key for s in again] == [s.key for s in specs]


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20), st.binary(max_size=8)
)
structures = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
SWEEP_KEYS = ["models", "model", "methods", "evals", "device", "repeats", "timeout_s", "trust_remote_code"]


@st.composite
def damaged_sweeps(draw) -> str:
    """A valid sweep with one key given a random value, or a random key added."""
    base = {"models": ["m"], "methods": ["baseline"], "evals": {"perplexity": {"seq_len": 8}}}
    key = draw(st.sampled_from([*SWEEP_KEYS, "modelz"]) | st.text(max_size=8))
    base[key] = draw(structures)
    return yaml.safe_dump(base, allow_unicode=True)


def parses_or_fails_in_one_line(text: str | bytes) -> None:
    try:
        load_text(text)
    except QuantbenchError as exc:
        assert "\n" not in str(exc) and str(exc).strip()


@BOUNDED
@given(damaged_sweeps())
def test_damaged_sweeps_fail_with_one_line_only(text):
    parses_or_fails_in_one_line(text)


@BOUNDED
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), structures.map(yaml.safe_dump)))
def test_arbitrary_files_as_sweeps_fail_with_one_line_only(text):
    parses_or_fails_in_one_line(text)


# --- method parameters ------------------------------------------------------------------------

param_values = st.one_of(
    st.text(max_size=12), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.sampled_from(["4", "-1", "64", "true", "nf4", "int8", "bfloat16", "1e3", " 8 ", "0x10", "lm_head"]),
)  # fmt: skip


@st.composite
def raw_params(draw, name: str) -> dict[str, Any]:
    fields = list(get_backend(name).Params.model_fields)
    keys = draw(st.lists(st.sampled_from(fields) | st.text(max_size=8), max_size=4, unique=True) if fields else
                st.lists(st.text(max_size=8), max_size=2, unique=True))  # fmt: skip
    return {k: draw(param_values) for k in keys}


@pytest.mark.parametrize("name", sorted(BACKENDS))
@BOUNDED
@given(data=st.data())
def test_method_parameters_are_valid_or_one_line(name, data):
    raw = data.draw(raw_params(name))
    params_model = get_backend(name).Params
    try:
        params = validate_params(params_model, raw, f"method {name!r}")
    except QuantbenchError as exc:
        message = str(exc)
        assert message.startswith(f"method {name!r}: ") and "\n" not in message
        return
    # What the runner keeps (non-default values, JSON) validates back to the same parameters.
    kept = params.model_dump(mode="json", exclude_defaults=True)
    assert params_model.model_validate(kept) == params


@BOUNDED
@given(st.text(max_size=40))
def test_method_strings_parse_or_fail_in_one_line(text):
    try:
        spec = MethodSpec.parse(text)
    except QuantbenchError as exc:
        assert "\n" not in str(exc)
        return
    assert spec.name == text.strip().partition(":")[0]


# --- packing ----------------------------------------------------------------------------------


def rows_per_word_group(bits: int) -> int:
    """The fewest rows of K that fill whole int32 words (32 / gcd(bits, 32))."""
    return 32 // math.gcd(bits, 32)


@pytest.mark.parametrize("bits", packing.PACKABLE_BITS)  # new widths in the module are covered as they land
@BOUNDED
@given(blocks=st.integers(1, 8), n_out=st.integers(1, 24), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, blocks, n_out, seed):
    k_in = blocks * rows_per_word_group(bits)
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (k_in, n_out), generator=generator, dtype=torch.uint8)
    codes[0, 0] = 2**bits - 1  # the top code, whose high bit lands on bit 31 of a word for some widths
    qweight = packing.pack_codes(codes, bits)
    assert qweight.dtype == torch.int32 and qweight.shape == (k_in * bits // 32, n_out)
    assert torch.equal(packing.unpack_codes(qweight, bits), codes)


@pytest.mark.parametrize("bits", packing.PACKABLE_BITS)
@BOUNDED
@given(k_in=st.integers(1, 70), bad_code=st.booleans())
def test_unpackable_shapes_and_codes_fail_in_one_line(bits, k_in, bad_code):
    codes = torch.zeros(k_in, 3, dtype=torch.int16)
    if bad_code:
        codes[-1, -1] = 2**bits
    ok_shape = k_in % rows_per_word_group(bits) == 0
    if ok_shape and not bad_code:
        assert packing.pack_codes(codes, bits).shape[0] == k_in * bits // 32
        return
    with pytest.raises(QuantbenchError) as err:
        packing.pack_codes(codes, bits)
    assert "\n" not in str(err.value)


@given(st.integers(-4, 40).filter(lambda b: b not in packing.PACKABLE_BITS))
@settings(max_examples=20, deadline=None)
def test_widths_without_a_packed_format_are_refused(bits):
    with pytest.raises(QuantbenchError, match="cannot be packed"):
        packing.pack_codes(torch.zeros(32, 1, dtype=torch.uint8), bits)
