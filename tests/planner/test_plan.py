"""make_plan, which both `quantbench plan` and the Planner tab call: numbers and input order."""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError
from quantbench.planner import plan as plan_module
from quantbench.planner.estimate import Workload, estimate
from quantbench.planner.formats import weight_format
from quantbench.planner.gpus import find_gpu
from quantbench.planner.plan import make_plan
from quantbench.planner.presets import preset

GPTQ4 = {"bits": 4, "group_size": 128}


def test_a_chosen_gpu_gets_headroom_and_limits():
    # docs/planner.md's first worked example.
    plan = make_plan("llama-3.1-8b", "gptq", GPTQ4, Workload(32768), "RTX 4090")
    expected = estimate(preset("llama-3.1-8b"), weight_format("gptq", GPTQ4), Workload(32768))
    assert plan.estimate.total == expected.total == 13_920_116_736
    assert plan.source == "bundled preset llama-3.1-8b"
    assert plan.gpu == find_gpu("RTX 4090")
    assert plan.headroom == 25_769_803_776 - 13_920_116_736 == 11_849_687_040
    assert plan.largest_context == 83_522
    assert plan.largest_batch == 2


def test_a_gpu_too_small_has_negative_headroom():
    plan = make_plan("llama-3.1-8b", "gptq", GPTQ4, Workload(32768, batch=8), "RTX 4090")
    assert plan.estimate.total == 67_472_990_208
    assert plan.headroom == 25_769_803_776 - 67_472_990_208
    assert (plan.largest_context, plan.largest_batch) == (10_440, 2)


def test_without_a_gpu_nothing_is_searched(monkeypatch):
    def no_search(*args):
        raise AssertionError("searched without a GPU")

    monkeypatch.setattr(plan_module, "largest_context", no_search)
    monkeypatch.setattr(plan_module, "largest_batch", no_search)
    plan = make_plan("llama-3.1-8b", "baseline", {}, Workload(4096), None)
    assert plan.estimate.total == estimate(preset("llama-3.1-8b"), weight_format("baseline", {}), Workload(4096)).total
    assert (plan.gpu, plan.headroom, plan.largest_context, plan.largest_batch) == (None, None, None, None)


def test_the_prefill_chunk_reaches_the_estimate():
    chunked = make_plan("llama-3.1-8b", "gptq", GPTQ4, Workload(32768, batch=8, prefill_chunk=2048), None)
    assert chunked.estimate.part("activations") == 1_677_721_600  # prefill of 8 × 2048 tokens


@pytest.mark.parametrize(
    ("workload", "gpu", "message"),
    [
        (Workload(4096), "RTX 9999", "unknown GPU 'RTX 9999'"),
        (Workload(0), None, "context must be a positive integer, got 0"),
        (Workload(4096, prefill_chunk=-1), None, "prefill_chunk must be a positive integer, got -1"),
        # both wrong: the workload is checked first
        (Workload(4096, kv_dtype="fp5"), "RTX 9999", "kv_dtype must be one of"),
    ],
)
def test_bad_input_raises_before_estimating(monkeypatch, workload, gpu, message):
    monkeypatch.setattr(plan_module, "estimate", lambda *args: pytest.fail("estimated despite bad input"))
    with pytest.raises(QuantbenchError, match=message) as err:
        make_plan("llama-3.1-8b", "gptq", GPTQ4, workload, gpu)
    assert "\n" not in str(err.value)


def test_bad_method_parameters_and_models_raise():
    with pytest.raises(QuantbenchError, match="method awq: bits: Input should be 4"):
        make_plan("llama-3.1-8b", "awq", {"bits": 8}, Workload(4096), None)
    with pytest.raises(QuantbenchError, match="not a preset"):
        make_plan("llama-3.1-9b", "gptq", GPTQ4, Workload(4096), None)
