import pytest

from quantbench.errors import QuantbenchError
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef, TrialSpec


def test_method_parse_keeps_name_and_params():
    spec = MethodSpec.parse("bnb:bits=4, quant_type=nf4")
    assert spec.name == "bnb"
    assert spec.params == {"bits": "4", "quant_type": "nf4"}
    assert spec.label == "bnb:bits=4,quant_type=nf4"


@pytest.mark.parametrize("text", ["", ":bits=4", "bnb:bits", "bnb:=4"])
def test_method_parse_rejects_malformed(text):
    with pytest.raises(QuantbenchError):
        MethodSpec.parse(text)


def test_key_is_stable_and_order_independent():
    a = TrialSpec(ModelRef("m"), MethodSpec("x", {"a": 1, "b": 2}), (EvalSpec("perplexity", {"seq_len": 8}),))
    b = TrialSpec(ModelRef("m"), MethodSpec("x", {"b": 2, "a": 1}), (EvalSpec("perplexity", {"seq_len": 8}),))
    c = TrialSpec(ModelRef("m"), MethodSpec("x", {"a": 1, "b": 3}), (EvalSpec("perplexity", {"seq_len": 8}),))
    assert a.key == b.key != c.key
    assert len(a.key) == 16


def test_planning_fills_defaults_so_equal_trials_share_a_key():
    evals = [EvalSpec("perplexity", {"seq_len": "64"})]
    implicit = plan_trial(ModelRef("m"), MethodSpec.parse("baseline"), evals)
    explicit = plan_trial(ModelRef("m"), MethodSpec.parse("baseline:dtype=float32"), evals)
    assert implicit.key == explicit.key
    assert implicit.evals[0].params["seq_len"] == 64  # coerced from the CLI's string


@pytest.mark.parametrize(
    ("method", "evals", "device", "message"),
    [
        ("nosuch", {}, "cpu", "unknown method 'nosuch'; valid methods: "),
        ("baseline:dtype=int3", {}, "cpu", "method 'baseline': dtype: Input should be"),
        ("baseline:colour=red", {}, "cpu", "colour: unknown parameter (valid: compute_dtype)"),
        ("baseline", {"seq_len": "1"}, "cpu", "eval 'perplexity': seq_len: Input should be greater than or equal to 2"),
        ("baseline", {"seq_len": "8", "stride": "9"}, "cpu", "stride (9) must not exceed seq_len (8)"),
        ("baseline", {}, "tpu", "unknown device 'tpu'"),
    ],
)
def test_planning_rejects_bad_input_in_one_line(method, evals, device, message):
    with pytest.raises(QuantbenchError) as err:
        plan_trial(ModelRef("m"), MethodSpec.parse(method), [EvalSpec("perplexity", evals)], device)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_planning_rejects_unknown_eval():
    with pytest.raises(QuantbenchError, match="unknown eval 'bleu'"):
        plan_trial(ModelRef("m"), MethodSpec.parse("baseline"), [EvalSpec("bleu")])
