"""Synthetic trials for the results tests: a builder of tidy rows and a filler for a store."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import write_trial

PROTOCOL = {"corpus": "builtin", "seq_len": 32, "max_tokens": 128, "batch_size": 1, "stride": None}
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def trial(
    key: str,
    method: str = "baseline",
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    *,
    day: int = 0,
    fingerprint: str = "fp-tiny",
    corpus: str = "builtin",
    protocol: dict | None = None,
    device: str = "cpu",
    hardware: str = "cpu: test",
    error: str | None = None,
) -> pa.Table:
    """One trial's rows: quantize metrics without corpus, everything else as a perplexity eval."""
    params = {"dtype": "float32"} if params is None and method == "baseline" else (params or {})
    label = method + (":" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) if params else "")
    header = TrialHeader(
        trial_key=key, model_ref="tiny", model_fingerprint=fingerprint, method=method, method_label=label,
        params=params, device=device, hardware=hardware, hardware_fingerprint=f"hw-{hardware}",
        versions={"torch": "2.9"}, git_sha="abc", kernel=f"{method} kernel", created_at=T0 + dt.timedelta(days=day),
    )  # fmt: skip
    rows = []
    for name, value in (metrics or {}).items():
        if name in ("weight_bytes", "bits_per_weight", "quantize_seconds"):
            rows.append(Metric("quantize", name, value, "bytes" if name.endswith("bytes") else ""))
        else:
            proto = protocol or {**PROTOCOL, "corpus": corpus}
            rows.append(Metric("perplexity", name, value, "", proto, corpus, f"hash-{corpus}"))
    return trial_table(header, rows, error=error)


def fill(store, *tables: pa.Table):
    for table in tables:
        write_trial(store, table["trial_key"][0].as_py(), table)
    return store
