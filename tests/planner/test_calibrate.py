"""Calibration over results frames shaped like results.store.read_results(): hand-built ones for
the arithmetic, and one the runner's own writer made, so the names compared are the names written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from quantbench.errors import QuantbenchError
from quantbench.planner.calibrate import LESS_CODE, compare, error_by_method, stored_layout, within
from quantbench.planner.estimate import CPU_RUNTIME_BYTES, CPU_RUNTIME_CODE_BYTES, Workload, estimate, weight_bytes
from quantbench.planner.formats import weight_format
from quantbench.planner.presets import preset
from quantbench.planner.weights import weight_groups
from quantbench.results.schema import TrialHeader, trial_table
from quantbench.results.store import read_results, write_trial
from quantbench.runner.trial import eval_peak_metrics
from quantbench.trackers import names
from quantbench.trackers.memory import MemoryPeak

ARCH = preset("smollm2-135m")
REF = "embedded:smollm2-135m"


def row(trial, method, params, metric, value, device="cpu", status="ok", model=REF, **extra):
    return {
        "trial_key": trial,
        "model_ref": model,
        "method": method,
        "params_json": json.dumps(params),
        "device": device,
        "status": status,
        "metric": metric,
        "value": value,
        "unit": "bytes",
        **extra,
    }


def architecture_of(ref):
    if ref != REF:
        raise QuantbenchError(f"model {ref!r} not found")
    return ARCH


BNB = weight_format("bnb", {"bits": 4, "compute_dtype": "bfloat16"})
BASE32 = weight_format("baseline", {"compute_dtype": "float32"})
RSS_WORK = Workload(512, batch=2, all_logits=True, use_cache=False, device="cpu")
PPL = {"eval": "perplexity", "protocol_json": json.dumps({"seq_len": 512, "batch_size": 2, "corpus": "builtin"})}


@pytest.fixture
def frame():
    bnb_weights = weight_bytes(ARCH, BNB).total
    rss = estimate(ARCH, BASE32, RSS_WORK).total
    cuda = estimate(ARCH, BNB, Workload(512, 2, all_logits=True, use_cache=False)).allocated
    return pd.DataFrame(
        [
            # compute_dtype is bnb's name for the dtype; threshold does not change bytes
            row("t1", "bnb", {"bits": 4, "compute_dtype": "bfloat16", "threshold": 6.0}, "weight_bytes", bnb_weights),
            row("t1", "bnb", {"bits": 4}, "perplexity", 12.3),  # not a memory metric: ignored
            row("t2", "baseline", {"dtype": "float32"}, "peak_rss_bytes", rss * 1.05, **PPL),
            row(
                "t3",
                "bnb",
                {"bits": 4, "compute_dtype": "bfloat16"},
                names.CUDA_MAX_ALLOCATED,
                cuda * 0.9,
                device="cuda:0",
                **PPL,
            ),
            row("t4", "baseline", {}, "peak_rss_bytes", 1e9, eval="perplexity", protocol_json="{}"),  # no seq_len
            row("t5", "baseline", {}, "weight_bytes", 1e9, status="failed"),  # failed trials are skipped
            row("t6", "baseline", {}, "weight_bytes", 1e9, model="org/unknown"),
            row("t7", "exl2", {}, "weight_bytes", 1e9),
        ]
    )


def test_compare_errors_per_trial(frame):
    out = compare(frame, architecture_of=architecture_of).set_index("trial_key")
    assert list(out.index) == ["t1", "t2", "t3", "t4", "t6", "t7"]
    assert out.loc["t1", "error_pct"] == 0  # the planner's bytes are the backend's bytes
    assert out.loc["t2", "error_pct"] == pytest.approx(100 * (1 / 1.05 - 1))
    assert out.loc["t3", "error_pct"] == pytest.approx(100 * (1 / 0.9 - 1))
    assert math.isnan(out.loc["t4", "predicted"]) and "no workload" in out.loc["t4", "note"]
    assert "not found" in out.loc["t6", "note"]
    assert "unknown method 'exl2'" in out.loc["t7", "note"]


def test_cpu_rss_prediction_includes_the_measured_runtime(frame):
    out = compare(frame, architecture_of=architecture_of).set_index("trial_key")
    assert out.loc["t2", "predicted"] == estimate(ARCH, BASE32, RSS_WORK).total
    assert out.loc["t2", "predicted"] > CPU_RUNTIME_BYTES


def test_torchao_int4_packing_follows_the_device():
    weights = {dev: weight_bytes(ARCH, weight_format("torchao", {"bits": 4}, dev)).total for dev in ("cpu", "cuda")}
    frame = pd.DataFrame(
        [
            row(f"t-{dev}", "torchao", {"bits": 4, "compute_dtype": "bfloat16"}, "weight_bytes", value, device=dev)
            for dev, value in weights.items()
        ]
    )
    out = compare(frame, architecture_of=architecture_of)
    assert list(out["error_pct"]) == [0, 0]


def test_error_by_method_and_within(frame):
    out = compare(frame, architecture_of=architecture_of)
    table = error_by_method(out).set_index(["method", "metric"])
    assert table.loc[("bnb", "weight_bytes"), "trials"] == 1
    assert table.loc[("baseline", "peak_rss_bytes"), "max_abs_error_pct"] == pytest.approx(100 * (1 - 1 / 1.05))
    assert within(out, 12)
    assert not within(out, 5)
    assert within(out, 5, metrics=("weight_bytes", "peak_rss_bytes"))


def test_missing_columns_are_named():
    with pytest.raises(QuantbenchError, match="results frame lacks columns params_json, status"):
        compare(pd.DataFrame(columns=["trial_key", "model_ref", "method", "device", "metric", "value"]))


@pytest.mark.parametrize(
    ("method", "stored", "device", "planned"),
    [
        ("hqq", {"nbits": 3, "group_size": 64, "axis": 1, "compute_dtype": "float16"}, "cpu",
         {"bits": 3, "group_size": 64, "compute_dtype": "float16"}),
        ("quanto", {"weights": "int4", "activations": "none", "compute_dtype": "bfloat16"}, "cpu",
         {"weights": "int4"}),
        ("quanto", {"weights": "float8"}, "cuda", {"weights": "float8"}),
        ("triton", {"bits": 4, "group_size": 128, "dtype": "auto"}, "cuda",
         {"bits": 4, "group_size": 128, "compute_dtype": "float16"}),
        # a full record: the 4-bit options it stores at their defaults do not trip bits=8's check
        ("bnb", {"bits": 8, "quant_type": "nf4", "double_quant": False, "threshold": 6.0}, "cpu", {"bits": 8}),
        ("torchao", {"bits": 4, "group_size": 32, "activations": "none"}, "cpu", {"bits": 4, "group_size": 32}),
        ("torchao", {"bits": 4, "group_size": 32, "activations": "none"}, "cuda", {"bits": 4, "group_size": 32}),
        # the trial's group of 64, not the plan default of 128
        ("gptq", {"bits": 4, "group_size": 64, "desc_act": False, "sym": True, "damp": 0.05}, "cuda",
         {"bits": 4, "group_size": 64}),
        ("rtn", {"bits": 4, "group_size": 128, "symmetric": True, "skip": ["lm_head"], "dtype": "float32"}, "cpu",
         {"bits": 4, "group_size": 128, "symmetric": True, "compute_dtype": "float32"}),
    ],
)  # fmt: skip
def test_a_stored_trial_is_priced_with_its_recorded_parameters(method, stored, device, planned):
    got, expected = stored_layout(method, stored, device), weight_format(method, planned, device)
    assert (got.label, got.dtype, got.linear_bytes(1536, 576)) == (
        expected.label,
        expected.dtype,
        expected.linear_bytes(1536, 576),
    )


def test_fake_quant_rss_is_predicted_with_dense_weights_and_the_mapped_source():
    """rtn keeps dequantized fp32 linears and, on CPU, the mmapped source file's pages of the
    linears it replaced (planner/calibrate.py RESIDENT_DENSE); weight_bytes stays the packed count."""
    rtn = {"bits": 4, "group_size": 64, "dtype": "float32"}
    linears = sum(g.numel for g in weight_groups(ARCH) if g.kind == "linear") * 4
    dense = estimate(ARCH, BASE32, RSS_WORK).total
    frame = pd.DataFrame(
        [
            row("r", "rtn", rtn, "peak_rss_bytes", dense + linears, **PPL),
            row("r", "rtn", rtn, "weight_bytes", weight_bytes(ARCH, weight_format("rtn", rtn)).total),
        ]
    )
    out = compare(frame, architecture_of=architecture_of).set_index("metric")
    assert out.loc["peak_rss_bytes", "error_pct"] == 0 and out.loc["peak_rss_bytes", "seq_len"] == 512
    assert out.loc["weight_bytes", "error_pct"] == 0


def test_a_peak_with_its_code_pages_is_also_compared_without_them():
    """Library code's resident pages depend on the page cache, not the model: the derived row takes
    the trial's own code pages off the measurement and the runtime's off the prediction."""
    full = estimate(ARCH, BASE32, RSS_WORK).total
    short = {**PPL, "protocol_json": json.dumps({"seq_len": 128, "corpus": "builtin"})}
    frame = pd.DataFrame(
        [
            row("c", "baseline", {}, "peak_rss_bytes", full + 100 * 2**20, **PPL),
            row("c", "baseline", {}, "peak_rss_code_bytes", CPU_RUNTIME_CODE_BYTES + 100 * 2**20, **PPL),
            row("c", "baseline", {}, "peak_rss_bytes", 1e9, **short),  # this eval recorded no code pages
            row("d", "baseline", {}, "peak_rss_bytes", 1e9, **PPL),
            row("d", "baseline", {}, "peak_rss_code_bytes", 0, **PPL),  # no /proc/self/smaps: not measured
        ]
    )
    out = compare(frame, architecture_of=architecture_of)
    assert list(out["metric"]) == ["peak_rss_bytes", LESS_CODE, "peak_rss_bytes", "peak_rss_bytes"]
    less = out[out["metric"] == LESS_CODE].iloc[0]
    assert less["measured"] == full - CPU_RUNTIME_CODE_BYTES
    assert less["predicted"] == full - CPU_RUNTIME_CODE_BYTES and less["error_pct"] == 0
    assert less["seq_len"] == 512
    assert out.iloc[0]["error_pct"] < 0  # the whole peak carries 100 MiB more library code than predicted
    assert within(out, 0.01, metrics=(LESS_CODE,)) and not within(out, 0.01)


def test_the_cuda_peak_the_runner_writes_is_the_one_compared(tmp_path):
    """Until the metric names were shared, the runner wrote the CUDA peaks only as
    `quantize_cuda_max_allocated_bytes` and latency's `inference_cuda_max_allocated_bytes` while the
    planner looked for `cuda_max_allocated_bytes`, so its CUDA check never ran. Here the rows come
    from the runner's writer (runner/trial.eval_peak_metrics), are stored and read back as a store
    is. This machine has no GPU: the tracker's result is the MemoryPeak that PeakMemory reports on
    CUDA, built with known peaks (CUDA's execution is not imitated; only its numbers are given)."""
    cuda = estimate(ARCH, BNB, Workload(512, 2, all_logits=True, use_cache=False)).allocated
    peak = MemoryPeak(rss_bytes=3 * 2**30, cuda_allocated_bytes=int(cuda * 0.9), cuda_reserved_bytes=int(cuda))
    params = {"bits": 4, "compute_dtype": "bfloat16"}
    header = TrialHeader(
        trial_key="bnb-cuda", model_ref=REF, model_fingerprint="fp", method="bnb", method_label="bnb:bits=4",
        params=params, device="cuda", hardware="NVIDIA H100", hardware_fingerprint="hw", versions={},
        git_sha="abc", kernel="bnb 4-bit",
    )  # fmt: skip
    protocol = json.loads(PPL["protocol_json"])
    metrics = eval_peak_metrics("perplexity", peak, "cuda", protocol=protocol, corpus="builtin", corpus_hash="h")
    write_trial(tmp_path, "bnb-cuda", trial_table(header, metrics))
    out = compare(read_results(tmp_path).frame, architecture_of=architecture_of)
    compared = out.set_index("metric").loc[names.CUDA_MAX_ALLOCATED]
    assert compared["measured"] == int(cuda * 0.9) and compared["predicted"] == cuda
    assert compared["error_pct"] == pytest.approx(100 * (cuda / int(cuda * 0.9) - 1))
    assert not within(out, 5, metrics=(names.CUDA_MAX_ALLOCATED,))  # the check can now fail


def test_a_cpu_trial_writes_no_cuda_peak():
    metrics = eval_peak_metrics("perplexity", MemoryPeak(rss_bytes=1, rss_file_bytes=1, rss_code_bytes=1), "cpu")
    assert [m.name for m in metrics] == [names.PEAK_RSS, names.PEAK_RSS_FILE, names.PEAK_RSS_CODE]


# The planner's weight bytes for the store-v1 trials (tests/fixtures/store-v1), as the code that
# wrote the store predicted them from the parameters they recorded (hqq's `nbits`, baseline's `dtype`).
V1_WEIGHTS = {
    "efd7746be6aaf520": 538_060_032,  # baseline
    "1d1d1f8b9a848d69": 173_106_432,  # rtn 4-bit
    "a929eae65de8ea2c": 156_517_632,  # rtn 3-bit symmetric
    "1629409813d0091c": 116_426_496,  # bnb nf4
    "a0be546953c922b6": 163_639_296,  # torchao int8
    "c346aae653a539db": 163_173_576,  # quanto int8
    "3a7c6648a26b070b": 116_413_056,  # hqq 4-bit
}


def test_old_store_trials_are_priced_from_their_recorded_parameters():
    store = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"
    out = compare(read_results(store).frame)
    predicted = out[out["metric"] == "weight_bytes"].set_index("trial_key")["predicted"]
    assert predicted.to_dict() == V1_WEIGHTS
