"""Eval parameters as typed in the CLI and the dashboard, read the same way by both."""

import pytest

from quantbench.app.inputs import as_text, duration, eval_specs, from_text, int_list, parse_evals
from quantbench.errors import QuantbenchError
from quantbench.evals.latency import LatencyParams
from quantbench.evals.tasks import TasksParams
from quantbench.spec import EvalSpec

LATENCY = LatencyParams.model_fields
TASKS = TasksParams.model_fields


def test_int_list():
    assert int_list(" 128, 512 ") == [128, 512] and int_list("") == []
    with pytest.raises(QuantbenchError, match="expected comma-separated integers, got '128;512'"):
        int_list("128;512")


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [
        (LATENCY["prompt_lengths"], "16, 32", [16, 32]),
        (LATENCY["new_tokens"], "8", "8"),  # a scalar goes to pydantic as typed
        (TASKS["tasks"], "piqa,hellaswag", ["piqa", "hellaswag"]),
        (TASKS["task_data"], "piqa=a.jsonl, hellaswag=b.jsonl", ["piqa=a.jsonl", "hellaswag=b.jsonl"]),
        (TASKS["limit"], None, None),
    ],
)
def test_text_is_read_by_its_field(field, text, value):
    assert from_text(field, text) == value


def test_a_collection_default_shows_as_the_text_that_reads_back_to_it():
    for params, field in ((LatencyParams(), "prompt_lengths"), (TasksParams(), "tasks")):
        default = getattr(params, field)
        assert list(from_text(type(params).model_fields[field], as_text(default))) == list(default)
    assert as_text({}) == "" and as_text({"piqa": "/d/a.jsonl"}) == "piqa=/d/a.jsonl" and as_text(7) == 7


def test_eval_specs_drop_unset_values_and_an_evals_own_parameters_win():
    values = {
        "perplexity": {"corpus": "builtin", "seq_len": 64, "max_tokens": None, "stride": ""},
        "latency": {"prompt_lengths": "16", "batch_sizes": "", "new_tokens": 4},
    }
    ppl, latency = eval_specs([EvalSpec("perplexity", {"seq_len": "32"}), EvalSpec("latency")], values)
    assert dict(ppl.params) == {"corpus": "builtin", "seq_len": "32"}
    assert dict(latency.params) == {"prompt_lengths": [16], "new_tokens": 4}


def test_eval_specs_name_an_unknown_eval():
    with pytest.raises(QuantbenchError, match="unknown eval 'perplexit'; valid evals: divergence, kv, latency"):
        eval_specs([EvalSpec("perplexit")], {})


def test_eval_texts_give_names_with_their_own_parameters():
    specs = parse_evals(["perplexity:seq_len=64,stride=32,divergence:top_k=8", "latency", "perplexity:batch_size=2"])
    assert specs == [
        EvalSpec("perplexity", {"seq_len": "64", "stride": "32", "batch_size": "2"}),
        EvalSpec("divergence", {"top_k": "8"}),
        EvalSpec("latency", {}),
    ]
    with pytest.raises(QuantbenchError, match="expected key=value, got 'x'"):
        parse_evals(["perplexity:x"])


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (89.6, "90 s"), (90, "1.5 min"), (3600, "60.0 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text
