"""Check the planner against what trials measured, and show its error per method.

Input is the tidy frame of `quantbench.results.store.read_results(store_dir)`: one row per
metric with columns trial_key, model_ref, method, params_json, device, status, metric, value.
Three measured metrics have a prediction:

- `weight_bytes` (the backend's exact count) vs the planner's weights — checks the backends' layouts;
- `cuda_max_allocated_bytes` (the eval's peak of torch's allocator, written by the runner on
  CUDA) vs weights + KV cache + activations (the allocator never sees the CUDA context, so the
  runtime term is left out);
- `peak_rss_bytes` (whole CPU process) vs the full CPU estimate, whose runtime term is the
  measured RSS of Python + torch + transformers (estimate.CPU_RUNTIME_BYTES).

From `peak_rss_bytes`, where the eval also recorded `peak_rss_code_bytes`, a derived row
`peak_rss_less_code_bytes`: the peak less the resident pages of code files (shared libraries) on
both sides, measured less the trial's own, predicted less the runtime's (CPU_RUNTIME_CODE_BYTES).
How much of libtorch is resident depends on how its file entered the page cache, not on the model
or the workload (190 to 298 MiB for the same imports on one machine: docs/planner.md), so this row
is the one that checks what the planner models.

Memory metrics need the workload the trial measured at: `workload_of(row)` gives it. The
default reads the eval's protocol (`protocol_json`): a perplexity eval scores `batch_size`
windows of `seq_len` tokens per forward with every position's logits and no KV cache. Rows
without a workload keep predicted = NaN and say why in `note`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from quantbench.backends.layout import Layout
from quantbench.backends.registry import get_backend, stored_params
from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture
from quantbench.planner.estimate import CPU_RUNTIME_CODE_BYTES, Workload, estimate, weight_bytes
from quantbench.planner.formats import backend_layout, weight_format
from quantbench.planner.source import load_architecture
from quantbench.planner.weights import weight_groups
from quantbench.trackers import names

# What the runner writes (runner/trial.py): the backend's weight count and each eval's own peaks.
MEASURED = (names.WEIGHT_BYTES, names.CUDA_MAX_ALLOCATED, names.PEAK_RSS)
# The CPU methods the planner's CPU terms are measured and calibrated on (bench/planner_overhead.py,
# bench/calibration.py, tests/planner/test_calibration_e2e.py), one per library at the setting people
# use it with. bnb:bits=8 is left out for time: its CPU fallback is the slowest forward here.
CPU_METHODS = (
    "baseline",
    "rtn:bits=4,group_size=64",
    "bnb:bits=4,quant_type=nf4",
    "torchao:bits=8",
    "quanto:weights=int8",
    "hqq:nbits=4,group_size=64",
)
LESS_CODE = "peak_rss_less_code_bytes"
NOTHING_MEASURED = f"no finished trial in the store measured {', '.join(MEASURED)}: run a trial first"
NEEDED_COLUMNS = ("trial_key", "model_ref", "method", "params_json", "device", "status", "metric", "value")
# Methods whose quantbench backend keeps the dequantized weights in the compute dtype (fake
# quantization: backends/rtn.py) while reporting the packed format's weight_bytes. Their process
# holds dense weights, so memory peaks are predicted as for the baseline in that dtype; weight_bytes
# is still compared with the packed format. On CPU the process also keeps the pages of the original
# linear weights: the model is loaded from an mmapped safetensors file, RTN replaces the linears
# with new tensors, but the kept embedding is a view into the same mapping, so the file stays
# mapped and the pages read while quantizing stay resident. /proc/self/smaps after RTN on
# SmolLM2-135M, gc and malloc_trim: 407 MiB of model.safetensors resident, its 405 MiB of linears
# (quanto and torchao, which quantize while loading: 0 MiB). Those bytes are added to the RSS
# prediction; a deployment of the packed format would not hold them.
RESIDENT_DENSE = ("rtn",)


def workload_from_protocol(row: pd.Series) -> Workload | None:
    """The workload of a perplexity eval's memory row, from its protocol; None for other evals
    or when the protocol does not record seq_len (the eval's default is not repeated here)."""
    protocol = _protocol(row)
    if row.get("eval") != "perplexity" or "seq_len" not in protocol:
        return None
    device = "cuda" if str(row["device"]).startswith("cuda") else "cpu"
    batch = int(protocol.get("batch_size", 1))
    return Workload(int(protocol["seq_len"]), batch, all_logits=True, use_cache=False, device=device)


def _protocol(row: pd.Series) -> dict[str, Any]:
    text = row.get("protocol_json")
    return json.loads(text) if isinstance(text, str) and text else {}  # NaN where a row has none


def stored_layout(method: str, params: dict[str, Any], device: str) -> Layout:
    """The layout a stored trial used: its backend's, for the parameters it recorded."""
    return backend_layout(get_backend(method), stored_params(method, params), device)


def _predict(
    row: pd.Series, arch: Architecture, workload_of: Callable[[pd.Series], Workload | None]
) -> tuple[float, str]:
    device = "cuda" if str(row["device"]).startswith("cuda") else "cpu"
    fmt = stored_layout(row["method"], json.loads(row["params_json"] or "{}"), device)
    if row["metric"] == names.WEIGHT_BYTES:
        return float(weight_bytes(arch, fmt).total), ""
    workload = workload_of(row)
    if workload is None:
        return math.nan, "no workload: not a perplexity eval, or its protocol lacks seq_len"
    extra = 0
    if row["method"] in RESIDENT_DENSE:
        stored, fmt = fmt, weight_format("baseline", {"compute_dtype": fmt.dtype}, device)
        if device == "cpu":
            extra = sum(g.numel for g in weight_groups(arch) if stored.quantizes(g.kind)) * fmt.dtype_bytes
    est = estimate(arch, fmt, workload)
    if row["metric"] == names.CUDA_MAX_ALLOCATED:
        return float(est.allocated), ""
    return float(est.total + extra), ""


def compare(
    results: pd.DataFrame,
    architecture_of: Callable[[str], Architecture] = lambda ref: load_architecture(ref)[0],
    workload_of: Callable[[pd.Series], Workload | None] = workload_from_protocol,
    ok_status: str = "ok",
) -> pd.DataFrame:
    """One row per measured memory metric of every finished trial: measured, predicted,
    error_pct = 100 × (predicted − measured) / measured, and a note when there is no prediction
    (unknown model or method, missing workload); after each CPU peak whose eval recorded its code
    pages, the same peak as a `peak_rss_less_code_bytes` row."""
    missing = [c for c in NEEDED_COLUMNS if c not in results.columns]
    if missing:
        raise QuantbenchError(f"results frame lacks columns {', '.join(missing)}; expected {', '.join(NEEDED_COLUMNS)}")
    ok = results[results["status"] == ok_status]
    rows = ok[ok["metric"].isin(MEASURED)]
    code_bytes = _by_eval(ok[ok["metric"] == names.PEAK_RSS_CODE])
    archs: dict[str, Architecture | str] = {}
    out = []
    for _, row in rows.iterrows():
        ref = row["model_ref"]
        if ref not in archs:
            try:
                archs[ref] = architecture_of(ref)
            except QuantbenchError as exc:
                archs[ref] = str(exc)  # remembered, so one unknown model is resolved once
        arch = archs[ref]
        predicted, note = math.nan, arch if isinstance(arch, str) else ""
        if not isinstance(arch, str):
            try:
                predicted, note = _predict(row, arch, workload_of)
            except QuantbenchError as exc:
                note = str(exc)
        measured = float(row["value"])
        out.append(_compared(row, row["metric"], measured, predicted, note))
        code = code_bytes.get(_eval_key(row))
        if row["metric"] == names.PEAK_RSS and code:  # 0: not measured (no /proc/self/smaps)
            out.append(_compared(row, LESS_CODE, measured - code, predicted - CPU_RUNTIME_CODE_BYTES, note))
    columns = ["trial_key", "model_ref", "method", "device", "metric", "measured", "predicted", "error_pct", "note"]
    columns.append("seq_len")
    return pd.DataFrame(out, columns=columns)


def _eval_key(row: pd.Series) -> tuple[str, str, str]:
    """Which eval of which trial a row belongs to: two perplexity evals differ in their protocol."""
    return row["trial_key"], str(row.get("eval", "")), str(row.get("protocol_json", ""))


def _by_eval(rows: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    return {_eval_key(row): float(row["value"]) for _, row in rows.iterrows()}


def _compared(row: pd.Series, metric: str, measured: float, predicted: float, note: str) -> dict[str, Any]:
    return {
        "trial_key": row["trial_key"],
        "model_ref": row["model_ref"],
        "method": row["method"],
        "device": row["device"],
        "metric": metric,
        "measured": measured,
        "predicted": predicted,
        "error_pct": 100 * (predicted - measured) / measured if measured else math.nan,
        "note": note,
        "seq_len": _protocol(row).get("seq_len", math.nan),  # which workload, for per-length tables
    }


def error_by_method(compared: pd.DataFrame) -> pd.DataFrame:
    """Per method and metric: trials with a prediction, mean signed error % and worst |error| %."""
    scored = compared.dropna(subset=["error_pct"])
    grouped = scored.groupby(["method", "metric"])["error_pct"]
    table = pd.DataFrame(
        {
            "trials": grouped.size(),
            "mean_error_pct": grouped.mean(),
            "max_abs_error_pct": grouped.apply(lambda e: e.abs().max()),
        }
    )
    return table.reset_index()


def within(compared: pd.DataFrame, tolerance_pct: float, metrics: tuple[str, ...] = (*MEASURED, LESS_CODE)) -> bool:
    """True when every predicted row is within ±tolerance_pct of its measurement (the calibration
    test's assertion); rows without a prediction are not counted, so check `note` too."""
    scored = compared.dropna(subset=["error_pct"])
    scored = scored[scored["metric"].isin(metrics)]
    return bool((scored["error_pct"].abs() <= tolerance_pct).all())
