"""Plan and run one trial: validate everything up front, quantize, evaluate, store.

Bad input (unknown method, invalid parameter, missing model, empty corpus, unwritable store)
raises QuantbenchError before any work starts and writes nothing. A failure *during* the
trial (a library crashing while quantizing or evaluating) is a result too: it is stored as a
failed trial with its reason.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from pydantic import BaseModel

from quantbench import models
from quantbench.backends.base import Availability, Backend
from quantbench.backends.registry import get_backend, method_label
from quantbench.corpora import Corpus, load_corpus
from quantbench.engines.coverage import Coverage
from quantbench.engines.protocol import QuantizedModel, engine_facts
from quantbench.errors import QuantbenchError
from quantbench.evals import progress
from quantbench.evals.registry import EVALS, get_eval
from quantbench.results import store as result_store
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.runner import environment
from quantbench.runner.envs import worker_python
from quantbench.spec import DEVICES, EvalSpec, MethodSpec, ModelRef, TrialSpec, validate_params
from quantbench.trackers import names
from quantbench.trackers.memory import MemoryPeak, PeakMemory, release_freed_heap

log = logging.getLogger(__name__)


def plan_trial(model: ModelRef, method: MethodSpec, evals: list[EvalSpec], device: str = "cpu") -> TrialSpec:
    """Validate parameters and fill in defaults, so equal trials get equal keys. Touches nothing."""
    if device not in DEVICES:
        raise QuantbenchError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if not evals:
        raise QuantbenchError(f"no eval requested; valid evals: {', '.join(sorted(EVALS))}")
    backend = get_backend(method.name)
    params = validate_params(backend.Params, method.params, f"method {method.name!r}")
    checked = []
    for spec in evals:
        eval_module = get_eval(spec.name)
        eval_params = validate_params(eval_module.Params, spec.params, f"eval {spec.name!r}")
        checked.append(EvalSpec(spec.name, _canonical(eval_params)))
    return TrialSpec(model, MethodSpec(method.name, _canonical(params)), tuple(checked), device)


def _canonical(params: BaseModel) -> dict[str, Any]:
    """Only what differs from the defaults: equal trials get equal keys, and re-validating the
    dict never trips a cross-field check on a default the user did not set (e.g. bnb's
    int8-only `threshold` under bits=4). The full set is recorded with the results."""
    return params.model_dump(mode="json", exclude_defaults=True)


@dataclass
class TrialOutcome:
    spec: TrialSpec
    status: str  # ok | failed | skipped (already in the store) | error (bad input, nothing stored) | cancelled
    metrics: list[Metric] = field(default_factory=list)
    error: str = ""
    path: Path | None = None


def completed_keys(store: Path) -> set[str]:
    frame = result_store.read_results(store).frame
    if frame.empty:
        return set()
    return set(frame.loc[frame["status"] == "ok", "trial_key"])


@dataclass(frozen=True)
class PreparedTrial:
    """A trial whose inputs were all checked: the model found, corpora read, the method available."""

    spec: TrialSpec
    backend: Backend
    model: models.ResolvedModel
    evals: tuple[PreparedEval, ...]
    calibration: Corpus | None = None  # the corpus the method calibrates on (`Backend.calibration_corpus`)
    python: str = sys.executable  # the interpreter its worker runs in (`envs.worker_python`)


@dataclass(frozen=True)
class PreparedEval:
    name: str
    module: ModuleType
    params: BaseModel  # validated, defaults filled in
    corpus: Corpus | None


def prepare_trial(spec: TrialSpec, store: Path) -> PreparedTrial:
    """Every check that can fail on bad input, done before any measurement (QuantbenchError)."""
    backend = get_backend(spec.method.name)
    python = worker_python(backend)
    # In another environment the worker checks the method there, as it prepares the trial again.
    availability = backend.check(spec.device) if python == sys.executable else Availability(True)
    if not availability.ok:
        raise QuantbenchError(f"method {spec.method.name!r} is unavailable on {spec.device}: {availability.reason}")
    result_store.check_writable(store)
    resolved = models.resolve(spec.model)
    refusal = backend.refusal(resolved, backend.Params.model_validate(spec.method.params), spec.device)
    if refusal:
        raise QuantbenchError(refusal)
    corpora: dict[str, Corpus] = {}  # evals (and the method's calibration) sharing a corpus read it once
    calibration_ref = backend.calibration_corpus(backend.Params.model_validate(spec.method.params))
    if calibration_ref is not None:
        corpora[calibration_ref] = load_corpus(calibration_ref)
    evals = []
    for eval_spec in spec.evals:
        module = get_eval(eval_spec.name)
        params = module.Params.model_validate(eval_spec.params)
        ref = getattr(params, "corpus", None)
        if ref is not None and ref not in corpora:
            corpora[ref] = load_corpus(ref)
        corpus = corpora.get(ref) if ref is not None else None
        module.check_inputs(resolved, params, corpus)
        if hasattr(module, "check_method"):
            module.check_method(backend, backend.Params.model_validate(spec.method.params))
        evals.append(PreparedEval(eval_spec.name, module, params, corpus))
    calibration = corpora[calibration_ref] if calibration_ref is not None else None
    return PreparedTrial(spec, backend, resolved, tuple(evals), calibration, python)


def trial_header(trial: PreparedTrial, kernel: str = "") -> TrialHeader:
    spec = trial.spec
    return TrialHeader(
        trial_key=spec.key,
        model_ref=spec.model.ref,
        model_fingerprint=trial.model.fingerprint,
        method=spec.method.name,
        method_label=method_label(spec.method),
        params=trial.backend.Params.model_validate(spec.method.params).model_dump(mode="json"),
        device=spec.device,
        hardware=environment.hardware(spec.device),
        hardware_fingerprint=environment.hardware_fingerprint(spec.device),
        versions=environment.versions(trial.backend.library),
        git_sha=environment.git_sha(),
        kernel=kernel,
    )


def record_failure(trial: PreparedTrial, store: Path, error: str, detail: str = "") -> TrialOutcome:
    """Store a failed trial: its one-line reason, plus detail (traceback, stderr tail) for the record."""
    table = trial_table(trial_header(trial), [], error=f"{error}\n{detail}".strip())
    return TrialOutcome(trial.spec, "failed", error=error, path=result_store.write_trial(store, trial.spec.key, table))


def execute(trial: PreparedTrial, store: Path) -> TrialOutcome:
    """Quantize, evaluate and write the rows of a prepared trial; a crash becomes a failed trial."""
    try:
        metrics, kernel = _measure(trial)
    except QuantbenchError:
        raise
    except Exception as exc:  # any library failure mid-trial is recorded, not fatal to a sweep
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return record_failure(trial, store, f"{type(exc).__name__}: {message}", traceback.format_exc(limit=-3))
    table = trial_table(trial_header(trial, kernel), metrics)
    return TrialOutcome(trial.spec, "ok", metrics, path=result_store.write_trial(store, trial.spec.key, table))


def _measure(trial: PreparedTrial) -> tuple[list[Metric], str]:
    spec = trial.spec
    params = trial.backend.Params.model_validate(spec.method.params)
    torch.manual_seed(0)
    start = time.perf_counter()
    # Adapters read the weights and quantize them in one call (bnb quantizes while loading), so
    # the "quantize" stage includes reading the checkpoint.
    with progress.stage("quantize"), PeakMemory() as quantize_memory:
        model = trial.backend.quantize(trial.model, params, spec.device, trial.calibration)
    metrics = [
        Metric("quantize", names.QUANTIZE_SECONDS, time.perf_counter() - start, "s"),
        Metric("quantize", names.QUANTIZE_PEAK_RSS, quantize_memory.peak.rss_bytes, "bytes"),
        Metric("quantize", names.WEIGHT_BYTES, model.weight_bytes, "bytes"),
        Metric("quantize", "bits_per_weight", model.bits_per_weight, "bits"),
        *_coverage_metrics(trial, model.coverage),
    ]
    if spec.device == "cuda":
        metrics.append(
            Metric("quantize", names.QUANTIZE_CUDA_MAX_ALLOCATED, quantize_memory.peak.cuda_allocated_bytes, "bytes")
        )
    metrics += [eval_metric("quantize", row, {}) for row in engine_facts(model)]
    for ev in trial.evals:
        release_freed_heap()  # each eval's peak RSS is its own, not what quantizing or the last eval freed
        unmeasured = []
        if hasattr(ev.module, "not_measurable"):
            unmeasured = ev.module.not_measurable(trial.backend, params, ev.params)
        with progress.stage(ev.name), PeakMemory() as eval_memory:
            rows = unmeasured or _run_eval(ev, model, trial, params)
        tags = {"protocol": ev.params.model_dump(mode="json")}
        if ev.corpus is not None:
            tags.update(corpus=ev.corpus.name, corpus_hash=ev.corpus.content_hash)
        metrics += [eval_metric(ev.name, row, tags) for row in rows]
        metrics += eval_peak_metrics(ev.name, eval_memory.peak, spec.device, **tags)
    return metrics, model.kernel


def _run_eval(ev: PreparedEval, model: QuantizedModel, trial: PreparedTrial, method_params: BaseModel) -> list[tuple]:
    """An eval's rows; one that needs the method itself (a sensitivity map quantizes unit by unit) has `run_method`."""
    if hasattr(ev.module, "run_method"):
        return ev.module.run_method(model, ev.params, ev.corpus, trial.model, trial.backend, method_params)
    return ev.module.run(model, ev.params, ev.corpus, trial.model)


def _coverage_metrics(trial: PreparedTrial, coverage: Coverage | None) -> list[Metric]:
    """The share of matrix weights the method stored in low precision, and a note (in the row and on
    the console) where it left more than a third in float. A method that stored none is bad input for
    this model (a 4-bit label on an unquantized model would mislead): QuantbenchError, nothing stored."""
    if coverage is None:
        return []
    quantizes = bool(trial.backend.layer_kinds)
    if quantizes and coverage.quantized_matrices == 0:
        raise QuantbenchError(coverage.nothing_quantized(trial.spec.method.name))
    note = coverage.unquantized_note() if quantizes else ""
    if note:
        log.warning("%s: %s", method_label(trial.spec.method), note)
    return [Metric("quantize", names.QUANTIZED_WEIGHT_FRACTION, coverage.fraction, "fraction", note=note)]


def eval_metric(eval_name: str, row: tuple, tags: dict[str, Any]) -> Metric:
    """A row of an eval, (name, value, unit[, note[, series]]) (see evals/registry.py), as a stored Metric."""
    name, value, unit, *extra = row
    note, series = (*extra, "", ())[:2]
    return Metric(eval_name, name, value, unit, **tags, note=note, series=tuple(series))


def eval_peak_metrics(eval_name: str, peak: MemoryPeak, device: str, **tags: Any) -> list[Metric]:
    """The rows of one eval's own memory peaks; the planner's calibration compares its predictions
    for the eval's workload with PEAK_RSS and, on CUDA, CUDA_MAX_ALLOCATED."""
    metrics = [
        Metric(eval_name, names.PEAK_RSS, peak.rss_bytes, "bytes", **tags),
        Metric(eval_name, names.PEAK_RSS_FILE, peak.rss_file_bytes, "bytes", **tags),
        Metric(eval_name, names.PEAK_RSS_CODE, peak.rss_code_bytes, "bytes", **tags),
    ]
    if device.startswith("cuda"):
        metrics.append(Metric(eval_name, names.CUDA_MAX_ALLOCATED, peak.cuda_allocated_bytes, "bytes", **tags))
        metrics.append(Metric(eval_name, names.CUDA_MAX_RESERVED, peak.cuda_reserved_bytes, "bytes", **tags))
    return metrics
