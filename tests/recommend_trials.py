"""Synthetic trials for the recommend tests (tests/results, tests/app, tests/browser): a baseline and four
quantized settings of one model with perplexity and divergence, and a failed trial."""

from __future__ import annotations

import datetime as dt

from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import write_trial

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
PROTOCOL = {"corpus": "builtin", "seq_len": 32, "max_tokens": 128, "batch_size": 1, "stride": None}
DIVERGENCE = {"corpus": "builtin", "seq_len": 32, "max_tokens": 128}


def measured(eval_name: str, metric: str, value: float, series=()) -> Metric:
    protocol = PROTOCOL if eval_name == "perplexity" else DIVERGENCE
    return Metric(eval_name, metric, value, "", protocol, "builtin", "hash-builtin", series=tuple(series))


def trial(key, method, params, day=0, ppl=None, kld=None, top1=None, error=None, extra=(), series=None, model="tiny"):
    """One trial: perplexity (± 1% of it), divergence (KLD ± 2%, top-1 ± 0.5 points) as given."""
    label = method + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
    header = TrialHeader(
        trial_key=key, model_ref=model, model_fingerprint=f"fp-{model}", method=method, method_label=label,
        params=params, device="cpu", hardware="cpu: test", hardware_fingerprint="hw", versions={}, git_sha="abc",
        created_at=T0 + dt.timedelta(days=day),
    )  # fmt: skip
    rows = [Metric("quantize", "weight_bytes", 1e6, "bytes")]
    if ppl is not None:
        rows += [measured("perplexity", "perplexity", ppl), measured("perplexity", "perplexity_stderr", ppl / 100)]
    if kld is not None:
        rows += [measured("divergence", "kld_mean", kld), measured("divergence", "kld_mean_stderr", kld / 50)]
        rows += [measured("divergence", "top1_agreement", top1), measured("divergence", "top1_agreement_stderr", 0.5)]
    rows += [measured(eval_name, metric, float(sum(values)), values) for eval_name, metric, values in series or ()]
    rows += list(extra)
    return trial_table(header, rows, error=error)


def store_trials(model: str = "tiny") -> tuple:
    """base fp32, rtn8 (KLD 0.01), rtn4 (0.09), triton4 (0.08), hqq4 (0.15) and a failed bnb 4-bit."""
    return (
        trial("base", "baseline", {"dtype": "float32"}, ppl=10.0, kld=0.0, top1=100.0, model=model),
        trial("rtn8", "rtn", {"bits": 8, "group_size": 64}, day=1, ppl=10.05, kld=0.01, top1=98.0, model=model),
        trial("rtn4", "rtn", {"bits": 4, "group_size": 64}, day=2, ppl=10.9, kld=0.09, top1=89.0, model=model),
        trial("tri4", "triton", {"bits": 4, "group_size": 64}, day=3, ppl=10.8, kld=0.08, top1=90.0, model=model),
        trial("hqq4", "hqq", {"nbits": 4, "group_size": 64}, day=4, ppl=11.5, kld=0.15, top1=85.0, model=model),
        trial("bnb4", "bnb", {"bits": 4}, day=5, error="RuntimeError: out of memory\ntraceback", model=model),
    )


def fill(store, *tables):
    for table in tables:
        write_trial(store, table["trial_key"][0].as_py(), table)
    return store
