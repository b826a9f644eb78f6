"""Labels name what a trial ran: headline parameters always, the others only when changed."""

import pytest

from quantbench.backends.registry import BACKENDS, get_backend, method_label
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("baseline", "baseline:dtype=float32"),
        ("rtn", "rtn:bits=4,group_size=64"),
        ("rtn:bits=4,group_size=64,symmetric=true", "rtn:bits=4,group_size=64,symmetric=True"),
        ("bnb:bits=4,quant_type=fp4", "bnb:bits=4,quant_type=fp4"),
        ("hqq:nbits=2", "hqq:group_size=64,nbits=2"),
        ("triton:source=hqq", "triton:bits=4,group_size=64,source=hqq"),
    ],
)
def test_label_shows_headline_and_changed_parameters(text, label):
    spec = plan_trial(ModelRef("org/model"), MethodSpec.parse(text), [EvalSpec("perplexity")])
    assert method_label(spec.method) == label


def test_equal_trials_get_equal_labels_however_spelled():
    spelled = ["rtn", "rtn:bits=4", "rtn:group_size=64,bits=4"]
    specs = [plan_trial(ModelRef("org/model"), MethodSpec.parse(t), [EvalSpec("perplexity")]) for t in spelled]
    assert len({s.key for s in specs}) == 1 and len({method_label(s.method) for s in specs}) == 1


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_headline_names_real_parameters(name):
    backend = get_backend(name)
    assert set(backend.headline) <= set(backend.Params.model_fields)
