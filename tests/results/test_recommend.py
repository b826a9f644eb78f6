"""Recommend on synthetic stores with hand-computed answers: which settings meet the bounds and fit the
memory, in which order, what each excluded one broke, which bound is met only within noise, and the
sweep that measures the unmeasured settings.

Memory is the planner's for SmolLM2-135M's architecture (the trials' model "tiny" is priced as it) on
CPU at context 512, batch 1, fp16 KV cache (MiB, from quantbench.planner.estimate): hqq 4-bit 771.5,
rtn/triton 4-bit 837.8 (the same packed format), rtn 8-bit 888.4, baseline float32 1185.9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from recommend_trials import DIVERGENCE, PROTOCOL, fill, store_trials, trial

from quantbench.backends.registry import method_label
from quantbench.errors import QuantbenchError
from quantbench.planner.calibrate import compare as calibration
from quantbench.planner.estimate import KV_BYTES
from quantbench.planner.gpus import GIB
from quantbench.planner.presets import preset
from quantbench.results.recommend import Bounds, Request, kv_dtype, recommend, sweep_yaml
from quantbench.results.schema import Metric
from quantbench.results.store import read_results
from quantbench.runner.sweep import load_sweep

ARCH = preset("smollm2-135m")
MIB = 2**20
STORE = store_trials()
BASE, RTN8, RTN4, TRITON4, HQQ4, BROKE = STORE
MEASURED = ("baseline:dtype=float32", "rtn:bits=8,group_size=64", "rtn:bits=4,group_size=64")


def run(tmp_path, *tables, candidates=MEASURED, **given):
    frame = read_results(fill(tmp_path, *tables)).frame
    bounds = {k: given.pop(k) for k in list(given) if k.startswith(("max_", "min_"))}
    request = Request("tiny", Bounds(**bounds), context=512, candidates=candidates, **given)
    return recommend(frame, request, arch=ARCH)


def labels(candidates) -> list[str]:
    return [c.label for c in candidates]


def test_everything_fits_smallest_memory_first(tmp_path):
    rec = run(tmp_path, *STORE, memory_gib=64, max_kld=1.0)
    # hqq 771.5 < the 4-bit packed pair 837.8 (tie on memory: triton's lower KLD first) < rtn8 < fp32.
    assert labels(rec.ranked) == [
        "hqq:nbits=4,group_size=64", "triton:bits=4,group_size=64", "rtn:bits=4,group_size=64",
        "rtn:bits=8,group_size=64", "baseline:dtype=float32",
    ]  # fmt: skip
    assert labels(rec.excluded) == ["bnb:bits=4"] and rec.excluded[0].failed == "RuntimeError: out of memory"
    assert rec.unmeasured == () and rec.sweep is None
    assert rec.reference == "base" and rec.budget_bytes == 64 * GIB
    kld = rec.ranked[0].checks[1]
    assert (kld.bound, kld.value, kld.unit, kld.within_noise) == ("max KLD 1", 0.15, "nats", False)
    assert kld.margin == pytest.approx(0.85)
    memory = rec.ranked[0].checks[0]
    assert memory.margin == 64 * GIB - rec.ranked[0].memory_bytes
    assert rec.ranked[0].memory_bytes / MIB == pytest.approx(771.53, abs=0.01)


def test_a_tie_on_memory_and_quality_is_broken_by_label(tmp_path):
    twin = trial("tri4", "triton", {"bits": 4, "group_size": 64}, day=3, ppl=10.9, kld=0.09, top1=89.0)
    rec = run(tmp_path, BASE, RTN4, twin, memory_gib=64, max_kld=1.0)
    assert labels(rec.ranked)[:2] == ["rtn:bits=4,group_size=64", "triton:bits=4,group_size=64"]
    assert rec.ranked[0].memory_bytes == rec.ranked[1].memory_bytes


def test_nothing_fits(tmp_path):
    rec = run(tmp_path, *STORE, memory_gib=0.5, max_kld=1.0)  # 512 MiB: less than any estimate
    assert rec.ranked == ()
    assert sorted(labels(rec.excluded)) == sorted([*MEASURED, "triton:bits=4,group_size=64",
                                                   "hqq:nbits=4,group_size=64", "bnb:bits=4"])  # fmt: skip
    hqq = next(c for c in rec.excluded if c.method == "hqq")
    assert [c.bound for c in hqq.broken] == ["memory 0.5 GiB"]
    assert hqq.broken[0].margin == 512 * MIB - hqq.memory_bytes


def test_kld_and_memory_bounds_exclude_with_the_bound_each_broke(tmp_path):
    # 0.85 GiB = 870.4 MiB: the 4-bit settings fit, rtn8 and fp32 do not.
    rec = run(tmp_path, *STORE, memory_gib=0.85, max_kld=0.085)
    assert labels(rec.ranked) == ["triton:bits=4,group_size=64"]
    broke = {c.label: [b.bound for b in c.broken] for c in rec.excluded}
    assert broke == {
        "baseline:dtype=float32": ["memory 0.85 GiB"],
        "rtn:bits=8,group_size=64": ["memory 0.85 GiB"],
        "rtn:bits=4,group_size=64": ["max KLD 0.085"],
        "hqq:nbits=4,group_size=64": ["max KLD 0.085"],
        "bnb:bits=4": [],  # failed: its error says why
    }
    rtn4 = next(c for c in rec.excluded if c.label == "rtn:bits=4,group_size=64")
    assert rtn4.broken[0].margin == pytest.approx(-0.005)


def test_relative_bounds_against_the_baseline(tmp_path):
    rec = run(tmp_path, *STORE, memory_gib=64, max_ppl_increase_pct=1.0, min_top1=95)
    assert labels(rec.ranked) == ["rtn:bits=8,group_size=64", "baseline:dtype=float32"]
    ppl = rec.ranked[0].checks[2]
    assert ppl.bound == "max ppl +1%" and ppl.value == pytest.approx(0.5) and ppl.margin == pytest.approx(0.5)
    top1 = rec.ranked[0].checks[1]
    assert top1.bound == "min top-1 95%" and top1.margin == pytest.approx(3.0)


def test_a_kld_bound_met_only_within_noise_is_flagged(tmp_path):
    # KLD 0.0845 ± 0.00169 (kld/50) against 0.085: 0.0005 of room, under 1.96 standard errors.
    close = trial("close", "rtn", {"bits": 4, "group_size": 64}, day=2, ppl=10.9, kld=0.0845, top1=89.0)
    rec = run(tmp_path, BASE, RTN8, close, memory_gib=64, max_kld=0.085)
    flagged = {c.label: [k.bound for k in c.within_noise] for c in rec.ranked}
    assert flagged == {"rtn:bits=4,group_size=64": ["max KLD 0.085"], "rtn:bits=8,group_size=64": [],
                       "baseline:dtype=float32": []}  # fmt: skip


def test_a_perplexity_bound_within_noise_uses_the_paired_windows(tmp_path):
    """Per-window NLL sums of 4 windows of 10 tokens. Baseline total 100 nats over 40 tokens; the
    candidate adds (1, 3, 0, 2): D = 6/40 = 0.15 nats. Residuals d_w - D·n_w = (-0.5, 1.5, -1.5, 0.5),
    squares sum 5, stderr = sqrt(4/3 · 5)/40 = 0.06455; t(3) 97.5% = 3.182 -> ±0.2054 nats. A bound of
    +20% is log(1.2) = 0.1823 nats: margin 0.0323 < 0.2054, within noise; +40% (0.3365): margin 0.1865,
    still within; +60% (0.4700): margin 0.3200, beyond the noise."""
    tokens = ("perplexity", "window_tokens", [10, 10, 10, 10])
    base = trial("base", "baseline", {"dtype": "float32"}, ppl=float(np.exp(2.5)),
                 series=[("perplexity", "window_nll_sum", [25, 25, 25, 25]), tokens])  # fmt: skip
    cand = trial("rtn4", "rtn", {"bits": 4, "group_size": 64}, day=1, ppl=float(np.exp(2.65)),
                 series=[("perplexity", "window_nll_sum", [26, 28, 25, 27]), tokens])  # fmt: skip
    for bound, noisy in ((20, True), (40, True), (60, False)):
        rec = run(tmp_path, base, cand, memory_gib=64, max_ppl_increase_pct=bound)
        check = next(c for c in rec.ranked if c.method == "rtn").checks[1]
        assert check.value == pytest.approx((np.exp(0.15) - 1) * 100)
        assert check.within_noise is noisy, bound


def test_the_unmeasured_settings_that_fit_come_with_their_sweep(tmp_path):
    candidates = ("rtn:bits=8,group_size=64", "bnb:bits=4,quant_type=nf4", "hqq:nbits=3,group_size=64",
                  "baseline:dtype=bfloat16")  # fmt: skip
    rec = run(tmp_path, BASE, RTN8, memory_gib=0.87, max_kld=0.05, candidates=candidates)
    # bf16 (915.4 MiB) does not fit 890.9 MiB; the 4-bit nf4 and 3-bit hqq do, rtn8 (888.4) is measured.
    assert labels(rec.unmeasured) == ["hqq:group_size=64,nbits=3", "bnb:bits=4"]
    assert all(c.trial_key is None and c.calibration == "planner only" for c in rec.unmeasured)
    assert labels(rec.excluded) == ["baseline:dtype=float32", "baseline:dtype=bfloat16"]
    path = tmp_path / "sweep.yaml"
    path.write_text(sweep_yaml(rec.sweep))
    sweep, specs = load_sweep(path)
    assert sweep.models == ["tiny"] and sweep.device == "cpu"
    assert sweep.evals == {"perplexity": PROTOCOL, "divergence": DIVERGENCE}
    assert [method_label(s.method) for s in specs] == ["hqq:group_size=64,nbits=3", "bnb:bits=4"]


def test_a_trial_lacking_a_bound_metric_is_unmeasured_not_ranked(tmp_path):
    no_kld = trial("rtn4", "rtn", {"bits": 4, "group_size": 64}, day=2, ppl=10.9)
    rec = run(tmp_path, BASE, no_kld, memory_gib=64, max_kld=0.1, candidates=())
    assert labels(rec.unmeasured) == ["rtn:bits=4,group_size=64"] and rec.unmeasured[0].missing == ("kld_mean",)
    assert yaml.safe_load(sweep_yaml(rec.sweep))["methods"] == ["rtn:bits=4,group_size=64"]


def test_memory_is_calibrated_by_the_settings_measured_peak(tmp_path):
    peak = Metric("perplexity", "peak_rss_bytes", 900 * MIB, "bytes", PROTOCOL, "builtin", "hash-builtin")
    hqq = trial("hqq4", "hqq", {"nbits": 4, "group_size": 64}, day=4, ppl=11.5, kld=0.15, top1=85.0, extra=[peak])
    frame = read_results(fill(tmp_path, BASE, hqq)).frame
    predicted = calibration(frame, architecture_of=lambda _: ARCH).query("metric == 'peak_rss_bytes'")["predicted"]
    rec = recommend(frame, Request("tiny", Bounds(max_kld=1), memory_gib=64, context=512, candidates=()), ARCH)
    chosen = next(c for c in rec.ranked if c.method == "hqq")
    factor = 900 * MIB / predicted.iloc[0]
    assert chosen.memory_bytes == pytest.approx(771.5315341949463 * MIB * factor, abs=1)
    assert chosen.calibration.startswith(f"×{factor:.3f} from 1 measured peak of hqq")


def test_a_gpu_target_prices_cuda(tmp_path):
    rec = run(tmp_path, *STORE, gpu="rtx-4090", max_kld=1.0)
    assert rec.budget_name == "RTX 4090 (24 GiB)" and rec.workload.device == "cuda"
    # On CUDA the project's packed format (triton, 639.9 MiB) is smaller than hqq's (641.6 MiB).
    assert rec.ranked[0].label == "triton:bits=4,group_size=64"
    assert rec.ranked[0].memory_bytes / MIB == pytest.approx(639.90, abs=0.01)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"gpu": "RTX 9999", "max_kld": 0.1}, "unknown GPU 'RTX 9999'"),
        ({"memory_gib": 8}, "give at least one quality bound"),
        ({"memory_gib": 8, "max_kld": -1.0}, "max_kld must be a non-negative number"),
        ({"memory_gib": 8, "min_top1": 120.0}, "min_top1 is a percentage"),
        ({"max_kld": 0.1}, "give a target"),
        ({"gpu": "T4", "memory_gib": 8, "max_kld": 0.1}, "give a target"),
        ({"memory_gib": 0, "max_kld": 0.1}, "memory must be a positive number"),
        (
            {"memory_gib": 8, "max_kld": 0.1, "candidates": ("rtn:group_size=48",)},
            "candidate rtn:group_size=48: group_size",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, given, message):
    with pytest.raises(QuantbenchError, match=message) as err:
        run(tmp_path, *STORE, **given)
    assert "\n" not in str(err.value)


def test_a_model_with_no_trials(tmp_path):
    frame = read_results(fill(tmp_path, *STORE)).frame
    with pytest.raises(QuantbenchError, match="no trials of 'llama' in the store; models there: tiny"):
        recommend(frame, Request("llama", Bounds(max_kld=0.1), memory_gib=8), ARCH)


def test_a_relative_bound_needs_a_baseline(tmp_path):
    with pytest.raises(QuantbenchError, match="no ok baseline trial of tiny"):
        run(tmp_path, RTN8, memory_gib=8, max_ppl_increase_pct=5)


def test_a_store_written_by_the_first_schema_is_recommended_from():
    """tests/fixtures/store-v1 (perplexity only, no per-window sums): the embedded model's architecture,
    memory calibrated by the RSS peaks it measured, noise judged from the stored stderr."""
    frame = read_results(Path(__file__).resolve().parents[1] / "fixtures" / "store-v1").frame
    request = Request("embedded:smollm2-135m", Bounds(max_ppl_increase_pct=5), memory_gib=2, context=512)
    rec = recommend(frame, request)
    assert labels(rec.ranked) == ["quanto:weights=int8", "torchao:bits=8", "baseline:dtype=float32"]
    assert all(c.calibration.startswith("×") for c in rec.ranked)
    assert [c.broken[0].bound for c in rec.excluded] == ["max ppl +5%"] * 4


def _kv_trial(key, method, params, day, kv_cache, kld, top1):
    """A trial that ran only the kv eval (evals/kv_cache.py) with `kv_cache`."""
    protocol = {**DIVERGENCE, "protocol": "llamacpp", "kv_cache": kv_cache}
    rows = [Metric("kv", name, value, "", protocol, "builtin", "hash-builtin") for name, value in
            (("kv_kld_mean", kld), ("kv_kld_mean_stderr", kld / 50), ("kv_top1_agreement", top1),
             ("kv_top1_agreement_stderr", 0.5))]  # fmt: skip
    return trial(key, method, params, day=day, extra=rows)


def test_a_quantized_kv_dtype_is_judged_on_the_kv_eval_of_that_dtype(tmp_path):
    kv_rtn8 = _kv_trial("kv-rtn8", "rtn", {"bits": 8, "group_size": 64}, 6, "quanto-int4", 0.04, 95.0)
    kv_rtn4 = _kv_trial("kv-rtn4", "rtn", {"bits": 4, "group_size": 64}, 7, "hqq-int4", 0.2, 80.0)
    kv_base = _kv_trial("kv-base", "baseline", {"dtype": "float32"}, 8, "llama.cpp-q8_0", 0.01, 99.0)
    rec = run(tmp_path, *STORE, kv_rtn8, kv_rtn4, kv_base, memory_gib=64, max_kld=0.1, kv_dtype="int4")
    # rtn8's int4-cache trial meets the bound (its divergence trial's 0.01 is not what counts); rtn4's
    # breaks it; the baseline measured an int8 cache only, so at int4 it is unmeasured, with its sweep, as
    # are the settings that ran no kv eval.
    assert labels(rec.ranked) == ["rtn:bits=8,group_size=64"] and rec.ranked[0].trial_key == "kv-rtn8"
    assert rec.ranked[0].checks[1].value == 0.04
    assert [(c.label, c.broken[0].value) for c in rec.excluded if c.broken] == [("rtn:bits=4,group_size=64", 0.2)]
    assert labels(rec.unmeasured) == [
        "hqq:nbits=4,group_size=64", "triton:bits=4,group_size=64", "baseline:dtype=float32",
    ]  # fmt: skip
    assert {c.missing for c in rec.unmeasured} == {("kv_kld_mean (kv eval with an int4 cache)",)}
    assert rec.sweep["evals"]["kv"]["kv_cache"] == "quanto-int4"
    # the same store at an fp16 cache reads the divergence eval, as before
    fp16 = run(tmp_path, memory_gib=64, max_kld=0.1)
    assert {c.label: c.trial_key for c in fp16.ranked}["rtn:bits=8,group_size=64"] == "rtn8"
    assert labels(fp16.ranked) == labels(run(tmp_path / "plain", *STORE, memory_gib=64, max_kld=0.1).ranked)


@pytest.mark.parametrize(("kv_cache", "dtype"), [("none", "fp16"), ("quanto-int2", "int2"), ("hqq-int4", "int4"),
                                                  ("llama.cpp-q8_0", "int8"), ("llama.cpp-q4_0", "int4")])  # fmt: skip
def test_a_kv_cache_maps_to_the_planners_dtype(kv_cache, dtype):
    assert kv_dtype(kv_cache) == dtype and dtype in KV_BYTES
