"""Which methods meet a user's quality bounds and fit their memory: measured quality and speed from the
store × the planner's memory for that model at the user's context, batch and KV-cache dtype.

Candidates are method settings (method + parameters, matched on the validated parameters, so
`hqq:nbits=4,group_size=64` and `hqq:group_size=64,nbits=4` are one). Each measured candidate is the
newest ok trial of that setting that compares with the model's baseline (same model fingerprint,
corpus and protocol); the settings in `DEFAULT_CANDIDATES` (or the user's own list) that the store has
not measured are priced by the planner alone and, where they fit, returned with the sweep that would
measure them with the evals and protocols the store's trials used.

Bounds, each checked against what the store measured, with a margin (room left before the bound;
negative: how far it is broken):
- max mean KLD (nats) and min top-1 agreement (%), from the divergence eval; at a quantized KV-cache
  dtype (int8, int4, int2), from the kv eval (evals/kv_cache.py) of a trial whose cache held that dtype
  (`kv_cache` quanto-int4, hqq-int4, llama.cpp-q4_0 are int4; llama.cpp-q8_0 is int8), so the cache's
  error counts; a setting without such a trial is unmeasured, and its sweep runs the kv eval;
- max perplexity increase (%) and max task-accuracy drop (points) against the baseline trial;
- min decode tokens/s at the user's batch (the latency eval, on the machine that measured it);
- memory: the planner's peak for this model at the user's workload, calibrated where the store measured
  the same setting's peak (× the median measured/predicted of its trials; of its method otherwise).

A met bound is "within noise" when the distance to the bound is not significant at 95%: the stderr of
the trial's own mean (or of the paired difference with the baseline, from the per-window sums, when
the store has them; Student's t with windows − 1 degrees of freedom, the normal quantile when only a
stored stderr is known). Such a candidate is ranked but flagged.

Ranking: smallest memory first among the candidates meeting every bound (the most room left for
context and batch), ties broken by quality on the first bound given (KLD, top-1, perplexity increase,
task drop, in that order), then by label, so the order is total and repeatable.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from quantbench.backends.registry import get_backend, method_label, stored_params
from quantbench.errors import QuantbenchError
from quantbench.evals.registry import EVALS
from quantbench.planner.config import Architecture
from quantbench.planner.estimate import Workload, estimate
from quantbench.planner.gpus import GIB, find_gpu
from quantbench.results.compare import (
    CONFIDENCE,
    WindowSums,
    default_reference,
    incomparability,
    paired_difference,
    window_sums,
)
from quantbench.results.query import wide
from quantbench.spec import MethodSpec, validate_params
from quantbench.trackers import names

# Settings people deploy, one or two per library; group size 64 divides every preset's widths and
# the embedded model's 576.
DEFAULT_CANDIDATES = (
    "baseline:dtype=bfloat16",
    "rtn:bits=8,group_size=64",
    "rtn:bits=4,group_size=64",
    "bnb:bits=8",
    "bnb:bits=4,quant_type=nf4",
    "torchao:bits=8",
    "quanto:weights=int8",
    "hqq:nbits=4,group_size=64",
    "gptq:bits=4,group_size=64",
    "awq:bits=4,group_size=64",
)

MEMORY = "memory"


@dataclass(frozen=True)
class Bounds:
    """Quality bounds (at least one) and an optional speed floor; None = not bounded."""

    max_kld: float | None = None  # mean KLD vs the unquantized model, nats
    min_top1: float | None = None  # top-1 agreement, %
    max_ppl_increase_pct: float | None = None  # perplexity increase over the baseline trial, %
    max_task_drop_points: float | None = None  # accuracy drop of every task the baseline measured, points
    min_decode_tps: float | None = None  # decode tokens/s at the request's batch

    def validate(self) -> None:
        quality = (self.max_kld, self.min_top1, self.max_ppl_increase_pct, self.max_task_drop_points)
        if all(b is None for b in quality):
            raise QuantbenchError(
                "give at least one quality bound: max KLD, min top-1 agreement, max perplexity increase % "
                "or max task-accuracy drop"
            )
        for name, value in vars(self).items():
            if value is not None and (not isinstance(value, int | float) or not math.isfinite(value) or value < 0):
                raise QuantbenchError(f"{name} must be a non-negative number, got {value!r}")
        if self.min_top1 is not None and self.min_top1 > 100:
            raise QuantbenchError(f"min_top1 is a percentage (0-100), got {self.min_top1}")


@dataclass(frozen=True)
class Request:
    """What the user has: a model of the store, a memory budget (a catalog GPU or a size) and a workload."""

    model: str  # model_ref or model_fingerprint in the store
    bounds: Bounds
    gpu: str | None = None
    memory_gib: float | None = None  # RAM or any memory size, when no GPU is named
    device: str | None = None  # runtime to price: default cuda for a GPU, cpu for a memory size
    context: int = 4096
    batch: int = 1
    kv_dtype: str = "fp16"
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES

    def budget(self) -> tuple[int, str]:
        """(bytes, how the budget is named) from the GPU or the memory size; exactly one is given."""
        if (self.gpu is None) == (self.memory_gib is None):
            raise QuantbenchError("give a target: a GPU from the catalog or a memory size in GiB (one, not both)")
        if self.gpu is not None:
            gpu = find_gpu(self.gpu)
            return gpu.memory_bytes, f"{gpu.name} ({gpu.memory_gib} GiB)"
        if not math.isfinite(self.memory_gib) or self.memory_gib <= 0:
            raise QuantbenchError(f"memory must be a positive number of GiB, got {self.memory_gib!r}")
        return int(self.memory_gib * GIB), f"{self.memory_gib:g} GiB"

    def workload(self) -> Workload:
        device = self.device or ("cuda" if self.gpu is not None else "cpu")
        work = Workload(context=self.context, batch=self.batch, kv_dtype=self.kv_dtype, device=device)
        work.validate()
        return work


@dataclass(frozen=True)
class Check:
    """One bound against one candidate: margin > 0 is room left, < 0 how far it is broken."""

    bound: str  # e.g. "max KLD 0.05"
    value: float
    margin: float
    unit: str
    within_noise: bool = False  # the distance to the bound is not significant (see the module docstring)

    @property
    def met(self) -> bool:
        return self.margin >= 0


@dataclass(frozen=True)
class Candidate:
    label: str
    method: str
    params: dict[str, Any]
    memory_bytes: int
    calibration: str  # how the memory was calibrated, or "planner only"
    checks: tuple[Check, ...] = ()
    trial_key: str | None = None  # None: not measured
    missing: tuple[str, ...] = ()  # metrics a bound needs that its trial lacks
    failed: str = ""  # the error of a setting whose only trials failed

    @property
    def broken(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.met)

    @property
    def within_noise(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.met and c.within_noise)

    def value(self, bound_prefix: str) -> float:
        return next((c.value for c in self.checks if c.bound.startswith(bound_prefix)), math.nan)


@dataclass(frozen=True)
class Recommendation:
    request: Request
    budget_bytes: int
    budget_name: str
    workload: Workload
    reference: str | None  # the baseline trial relative bounds are measured against
    ranked: tuple[Candidate, ...]
    excluded: tuple[Candidate, ...]  # measured or priced, with the bounds each broke (or its failure)
    unmeasured: tuple[Candidate, ...]  # fit the budget, but the store lacks what the bounds need
    sweep: dict[str, Any] | None = None  # the sweep file that would measure `unmeasured`


def _setting_key(method: str, params: dict[str, Any]) -> tuple[str, str]:
    """Identity of a setting: the method and its validated parameters, every field filled in."""
    return method, json.dumps(stored_params(method, params).model_dump(mode="json"), sort_keys=True)


def _critical(dof: int | None) -> float:
    quantile = 0.5 + CONFIDENCE / 2
    return float(stats.t.ppf(quantile, dof)) if dof else float(stats.norm.ppf(quantile))


def _noise(margin: float, stderr: float, dof: int | None) -> bool:
    return bool(math.isfinite(stderr) and abs(margin) <= _critical(dof) * stderr)


def _own_mean_error(sums: WindowSums | None, stderr: float) -> tuple[float, int | None]:
    """Stderr of a per-token mean: across its windows (compare.py's ratio estimator, t with W − 1 dof)
    when the store has them, else the stored stderr (normal quantile)."""
    if sums is not None and len(sums.tokens) > 1:
        zero = WindowSums(np.zeros_like(sums.sums, dtype=float), sums.tokens)
        return paired_difference(sums, zero).stderr, len(sums.tokens) - 1
    return stderr, None


def _paired_error(frame: pd.DataFrame, key: str, ref: str, eval_name: str, series: str) -> tuple[float, int] | None:
    """Stderr (and dof) of the per-token mean difference of two trials on the same windows, or None."""
    a, b = window_sums(frame, key, eval_name, series), window_sums(frame, ref, eval_name, series)
    if a is None or b is None or not np.array_equal(a.tokens, b.tokens) or len(a.tokens) < 2:
        return None
    return paired_difference(a, b).stderr, len(a.tokens) - 1


def _get(row: pd.Series, metric: str) -> float:
    value = row.get(metric, math.nan)
    return float(value) if value is not None and not pd.isna(value) else math.nan


QUANTIZED_KV = {"int8": "hqq-int8", "int4": "quanto-int4", "int2": "quanto-int2"}  # the cache a sweep measures


def kv_dtype(kv_cache: str) -> str:
    """The planner's KV dtype (planner/estimate.py KV_BYTES) of a kv eval's `kv_cache`: its bits as intN,
    ggml's q8_0/q4_0 as int8/int4 (one fp16 scale per 32 elements, within 1% of the planner's int8/int4)."""
    dtype = kv_cache.rpartition("-")[2]
    return "fp16" if kv_cache == "none" else {"q8_0": "int8", "q4_0": "int4"}.get(dtype, dtype)


def _kv_dtypes(frame: pd.DataFrame) -> dict[str, str]:
    """trial key -> the planner's KV dtype its kv eval measured, for the trials that ran one."""
    rows = frame[frame["eval"] == "kv"].drop_duplicates("trial_key")
    return {
        k: kv_dtype(json.loads(p or "{}").get("kv_cache", ""))
        for k, p in zip(rows["trial_key"], rows["protocol_json"], strict=True)
    }


def _checks(
    frame: pd.DataFrame, row: pd.Series, ref: pd.Series | None, bounds: Bounds, batch: int, kv: str | None = None
):
    """(checks, missing metrics) of one measured trial against the quality and speed bounds; `kv`: the
    quantized KV dtype whose kv-eval rows the KLD and top-1 bounds read (None: the divergence eval's)."""
    checks, missing = [], []
    key = row["trial_key"]
    quality_eval, prefix = ("divergence", "") if kv is None else ("kv", "kv_")
    measured_kv = kv is None or _kv_dtypes(frame[frame["trial_key"] == key]).get(key) == kv
    if bounds.max_kld is not None:
        value = _get(row, prefix + "kld_mean") if measured_kv else math.nan
        if math.isnan(value):
            missing.append("kld_mean" if kv is None else f"kv_kld_mean (kv eval with an {kv} cache)")
        else:
            err, dof = _own_mean_error(window_sums(frame, key, quality_eval, prefix + "window_kld_sum"),
                                       _get(row, prefix + "kld_mean_stderr"))  # fmt: skip
            margin = bounds.max_kld - value
            checks.append(Check(f"max KLD {bounds.max_kld:g}", value, margin, "nats", _noise(margin, err, dof)))
    if bounds.min_top1 is not None:
        value = _get(row, prefix + "top1_agreement") if measured_kv else math.nan
        if math.isnan(value):
            missing.append("top1_agreement" if kv is None else f"kv_top1_agreement (kv eval with an {kv} cache)")
        else:
            err, dof = _own_mean_error(window_sums(frame, key, quality_eval, prefix + "window_top1_agree"), math.nan)
            err = err * 100 if dof else _get(row, prefix + "top1_agreement_stderr")
            margin = value - bounds.min_top1
            checks.append(Check(f"min top-1 {bounds.min_top1:g}%", value, margin, "%", _noise(margin, err, dof)))
    if bounds.max_ppl_increase_pct is not None:
        value, base = _get(row, "perplexity"), _get(ref, "perplexity") if ref is not None else math.nan
        if math.isnan(value) or math.isnan(base):
            missing.append("perplexity")
        else:
            increase = (value / base - 1) * 100
            # Tested on the mean NLL, of which perplexity is exp: the bound is log(1 + p/100) nats.
            nll_margin = math.log1p(bounds.max_ppl_increase_pct / 100) - math.log(value / base)
            paired = _paired_error(frame, key, ref["trial_key"], "perplexity", "window_nll_sum")
            if paired is None:  # independent estimates: delta method, se(log ppl) = se(ppl) / ppl
                se = math.hypot(_get(row, "perplexity_stderr") / value, _get(ref, "perplexity_stderr") / base)
                paired = (se, None)
            margin = bounds.max_ppl_increase_pct - increase
            bound = f"max ppl +{bounds.max_ppl_increase_pct:g}%"
            checks.append(Check(bound, increase, margin, "%", _noise(nll_margin, *paired)))
    if bounds.max_task_drop_points is not None:
        tasks = [] if ref is None else _task_scores(ref)
        if not tasks:
            missing.append("task:* (the baseline measured no task)")
        for task in tasks:
            value, base = _get(row, task), _get(ref, task)
            if math.isnan(value):
                missing.append(task)
                continue
            drop = (base - value) * 100
            se = 100 * math.hypot(_get(row, task + "_stderr"), _get(ref, task + "_stderr"))
            margin = bounds.max_task_drop_points - drop
            bound = f"max drop {bounds.max_task_drop_points:g} pt {task.removeprefix('task:')}"
            checks.append(Check(bound, drop, margin, "points", _noise(margin, se, None)))
    if bounds.min_decode_tps is not None:
        value = _get(row, f"decode_tokens_per_second@batch={batch}")
        if math.isnan(value):
            missing.append(f"decode_tokens_per_second@batch={batch}")
        else:
            checks.append(Check(f"min decode {bounds.min_decode_tps:g} tok/s", value, value - bounds.min_decode_tps,
                                "tok/s"))  # fmt: skip
    return checks, missing


def _task_scores(row: pd.Series) -> list[str]:
    """The accuracy-like task scores of a trial (`task:<task>:acc...`), not their stderr or counts."""
    return sorted(
        str(c) for c in row.index
        if str(c).startswith("task:") and str(c).split("@")[0].rsplit(":", 1)[-1].startswith("acc")
        and not str(c).split("@")[0].endswith("_stderr") and not pd.isna(row[c])
    )  # fmt: skip


def _calibration(frame: pd.DataFrame, arch: Architecture, device: str) -> dict[str, dict[str, list[float]]]:
    """measured / predicted peak ratios of the store's trials on `device`, by setting label and by method."""
    from quantbench.planner.calibrate import compare

    metric = names.CUDA_MAX_ALLOCATED if device == "cuda" else names.PEAK_RSS
    compared = compare(frame, architecture_of=lambda _ref: arch)
    compared = compared[(compared["metric"] == metric) & compared["predicted"].notna()]
    compared = compared[compared["device"].astype(str).str.startswith(device)]
    labels = frame.drop_duplicates("trial_key").set_index("trial_key")["method_label"]
    ratios: dict[str, dict[str, list[float]]] = {"label": {}, "method": {}}
    for row in compared.itertuples():
        ratio = row.measured / row.predicted
        ratios["label"].setdefault(labels[row.trial_key], []).append(ratio)
        ratios["method"].setdefault(row.method, []).append(ratio)
    return ratios


def _memory(arch: Architecture, method: str, params: dict[str, Any], label: str, work: Workload, ratios) -> tuple:
    """(bytes, how calibrated) of one setting at the request's workload."""
    layout = get_backend(method).layout(stored_params(method, params), work.device)
    est = estimate(arch, layout, work)
    # On CUDA the store measures torch's allocator, which never sees the runtime (CUDA context).
    modelled = est.allocated if work.device == "cuda" else est.total
    for scope, name in (("label", label), ("method", method)):
        found = ratios[scope].get(name)
        if found:
            factor = statistics.median(found)
            how = f"×{factor:.3f} from {len(found)} measured peak{'s' if len(found) > 1 else ''} of {name}"
            return round(modelled * factor) + est.total - modelled, how
    return est.total, "planner only"


def _rank_key(candidate: Candidate) -> tuple:
    order = [("max KLD", 1), ("min top-1", -1), ("max ppl", 1), ("max drop", 1)]
    quality = next((sign * candidate.value(prefix) for prefix, sign in order
                    if not math.isnan(candidate.value(prefix))), 0.0)  # fmt: skip
    return candidate.memory_bytes, quality, candidate.label


def _model_frame(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    chosen = frame[(frame["model_ref"] == model) | (frame["model_fingerprint"] == model)] if not frame.empty else frame
    if chosen.empty:
        known = sorted(set(frame["model_ref"])) if not frame.empty else []
        raise QuantbenchError(f"no trials of {model!r} in the store; models there: {', '.join(known) or 'none'}")
    return chosen


def _reference(frame: pd.DataFrame, table: pd.DataFrame, bounds: Bounds) -> str | None:
    """The baseline trial the candidates must compare with (None: the store has none and no bound needs it)."""
    baselines = table[(table["method"] == "baseline") & (table["status"] == "ok")].sort_values("created_at")
    if baselines.empty:
        if bounds.max_ppl_increase_pct is not None or bounds.max_task_drop_points is not None:
            model = table["model_ref"].iloc[0]
            raise QuantbenchError(
                f"no ok baseline trial of {model} in the store: a perplexity or task bound is relative to it; "
                "run `quantbench run --method baseline` with the same evals"
            )
        return None
    return default_reference(frame, [baselines["trial_key"].iloc[-1]])


@dataclass(frozen=True)
class _Context:
    """What every setting of one request is judged with."""

    frame: pd.DataFrame
    arch: Architecture
    work: Workload
    ratios: dict[str, dict[str, list[float]]]
    budget: int
    budget_name: str
    ref: str | None
    ref_row: pd.Series | None
    bounds: Bounds


def _stored_setting(method: str, params_json: str | None, trial_key: str) -> tuple[str, str]:
    """A stored trial's setting; one whose parameters no longer validate stands alone (its trial key)."""
    try:
        return _setting_key(method, json.loads(params_json or "{}"))
    except QuantbenchError:
        return method, trial_key


def _measured(trials: pd.DataFrame, ctx: _Context) -> tuple[str, Candidate]:
    """Where one stored setting goes (ranked, excluded or unmeasured), judged on its newest comparable
    ok trial that has every metric the bounds need (else its newest comparable ok trial)."""
    newest = trials.iloc[0]
    label, method, params = newest["method_label"], newest["method"], json.loads(newest["params_json"] or "{}")
    memory, how = _memory(ctx.arch, method, params, label, ctx.work, ctx.ratios)
    memory_check = Check(f"memory {ctx.budget_name}", memory, ctx.budget - memory, "bytes")
    base = Candidate(label, method, params, memory, how, (memory_check,), newest["trial_key"])
    ok = trials[trials["status"] == "ok"]
    if ok.empty:
        return "excluded", replace(base, failed=str(newest["error"] or "failed").splitlines()[0])
    if ctx.ref is not None:
        comparable = ok[[incomparability(ctx.frame, ctx.ref, k) is None for k in ok["trial_key"]]]
        if comparable.empty:
            why = incomparability(ctx.frame, ctx.ref, ok["trial_key"].iloc[0])
            failed = f"not comparable with the baseline {ctx.ref[:8]}: {why}"
            return "excluded", replace(base, trial_key=ok["trial_key"].iloc[0], failed=failed)
        ok = comparable
    kv = ctx.work.kv_dtype if ctx.work.kv_dtype in QUANTIZED_KV else None
    scored = [(row, *_checks(ctx.frame, row, ctx.ref_row, ctx.bounds, ctx.work.batch, kv)) for _, row in ok.iterrows()]
    row, checks, missing = next(((r, c, m) for r, c, m in scored if not m), scored[0])
    candidate = replace(base, checks=(memory_check, *checks), trial_key=row["trial_key"], missing=tuple(missing))
    if candidate.broken:
        return "excluded", candidate
    return ("unmeasured" if missing else "ranked"), candidate


def recommend(frame: pd.DataFrame, request: Request, arch: Architecture | None = None) -> Recommendation:
    """Rank the settings for `request` from the tidy rows `frame` (see the module docstring). `arch`
    overrides the model's architecture (default: the planner's, from the model reference)."""
    request.bounds.validate()
    budget, budget_name = request.budget()
    work = request.workload()
    candidates = [MethodSpec.parse(text) for text in request.candidates]
    for spec in candidates:
        validate_params(get_backend(spec.name).Params, spec.params, f"candidate {spec.label}")
    frame = _model_frame(frame, request.model)
    if arch is None:
        from quantbench.planner.source import load_architecture

        arch = load_architecture(str(frame["model_ref"].iloc[0]))[0]
    table = wide(frame).sort_values(["created_at", "trial_key"], ascending=False, kind="stable")
    ref = _reference(frame, table, request.bounds)
    ref_row = table.set_index("trial_key", drop=False).loc[ref] if ref else None
    ratios = _calibration(frame, arch, work.device)

    answers: dict[str, list[Candidate]] = {"ranked": [], "excluded": [], "unmeasured": []}
    settings = [_stored_setting(m, p, k) for m, p, k in zip(table["method"], table["params_json"], table["trial_key"],
                                                             strict=True)]  # fmt: skip
    seen = set(settings)
    context = _Context(frame, arch, work, ratios, budget, budget_name, ref, ref_row, request.bounds)
    for key in dict.fromkeys(settings):  # newest first, each setting once
        trials = table[[s == key for s in settings]]
        try:
            where, candidate = _measured(trials, context)
        except QuantbenchError as exc:  # a method this installation cannot price (an adapter not installed)
            newest, why = trials.iloc[0], f"cannot price: {exc}"
            where = "excluded"
            candidate = Candidate(newest["method_label"], newest["method"], {}, 0, "", (), newest["trial_key"], (), why)
        answers[where].append(candidate)
    ranked, excluded, unmeasured = answers["ranked"], answers["excluded"], answers["unmeasured"]

    for spec in candidates:
        params = dict(spec.params)
        key = _setting_key(spec.name, params)
        if key in seen:
            continue
        seen.add(key)
        label = method_label(spec)
        memory, how = _memory(arch, spec.name, params, label, work, ratios)
        candidate = Candidate(label, spec.name, params, memory, how,
                              (Check(f"memory {budget_name}", memory, budget - memory, "bytes"),))  # fmt: skip
        (excluded if candidate.broken else unmeasured).append(candidate)

    ranked.sort(key=_rank_key)
    excluded.sort(key=lambda c: (c.trial_key is None, c.label))
    unmeasured.sort(key=lambda c: (c.memory_bytes, c.label))
    model_ref = str(frame["model_ref"].iloc[0])
    sweep = sweep_for(frame, table, model_ref, unmeasured, request.bounds, work.kv_dtype) if unmeasured else None
    return Recommendation(request, budget, budget_name, work, ref, tuple(ranked), tuple(excluded),
                          tuple(unmeasured), sweep)  # fmt: skip


# The eval each bound needs, run with its defaults when no trial of the model ran it.
BOUND_EVALS = {"max_kld": "divergence", "min_top1": "divergence", "max_ppl_increase_pct": "perplexity",
               "min_decode_tps": "latency"}  # fmt: skip


def sweep_for(
    frame: pd.DataFrame,
    table: pd.DataFrame,
    model_ref: str,
    unmeasured: list[Candidate],
    bounds: Bounds,
    kv: str = "fp16",
) -> dict[str, Any]:
    """The sweep (runner/sweep.py format) that measures exactly the `unmeasured` settings with the evals
    and protocols of the model's newest ok trials, so the new trials compare with the stored ones; at a
    quantized KV dtype `kv` with a KLD or top-1 bound, with the kv eval at a cache of that dtype too."""
    ok = frame[(frame["status"] == "ok") & frame["eval"].isin(list(EVALS))].sort_values("created_at")
    evals: dict[str, dict[str, Any]] = {}
    for row in ok.drop_duplicates("eval", keep="last").itertuples():
        evals[row.eval] = json.loads(row.protocol_json or "{}")
    for name, eval_name in BOUND_EVALS.items():
        if getattr(bounds, name) is not None:
            evals.setdefault(eval_name, {})
    if kv in QUANTIZED_KV and (bounds.max_kld is not None or bounds.min_top1 is not None):
        evals["kv"] = {**evals.get("kv", {}), "kv_cache": QUANTIZED_KV[kv]}
    devices = table.loc[table["status"] == "ok", "device"]
    device = str(devices.iloc[0]).split(":")[0] if not devices.empty else "cpu"
    return {"models": [model_ref], "device": device, "methods": [c.label for c in unmeasured], "evals": evals}


def sweep_yaml(sweep: dict[str, Any]) -> str:
    header = "# The settings `quantbench recommend` found unmeasured: quantbench sweep THIS_FILE\n"
    return header + yaml.safe_dump(sweep, sort_keys=False, default_flow_style=None)
