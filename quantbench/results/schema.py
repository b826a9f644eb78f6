"""The tidy row format of the results store: one row per metric of a trial.

Every row repeats what makes it comparable and reproducible (model fingerprint, method and
parameters, protocol, corpus hash, device, hardware, library versions), so a single row read
on its own still says where it came from. A failed trial is stored too: one row with status
"failed", the error text and no metric.

Versions: 1, the first; 2 adds `note`, why a metric row has no value (e.g. `checkpoint_bytes` of
a method whose model cannot be saved); 3 adds `series`, the per-window parts of a metric whose
value is their sum (e.g. `window_nll_sum`), so two trials can be compared window by window
without their logits. Readers take files of every version (missing columns read as null).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 3

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("trial_key", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("model_ref", pa.string()),
        ("model_fingerprint", pa.string()),
        ("method", pa.string()),
        ("method_label", pa.string()),
        ("params_json", pa.string()),
        ("device", pa.string()),
        ("kernel", pa.string()),  # the code path that actually ran, e.g. "bnb cpu int8 fallback"
        ("hardware", pa.string()),
        ("hardware_fingerprint", pa.string()),
        ("versions_json", pa.string()),
        ("git_sha", pa.string()),
        ("eval", pa.string()),
        ("protocol_json", pa.string()),
        ("corpus", pa.string()),
        ("corpus_hash", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("note", pa.string()),  # why `value` is missing, when it is (version 2)
        ("series", pa.list_(pa.float64())),  # per-window parts of `value`, in window order (version 3)
    ]
)

# Without these a file is not a result file at all; other columns may be missing in older versions.
REQUIRED_COLUMNS = ("trial_key", "status", "metric", "value")


@dataclass(frozen=True)
class Metric:
    eval: str  # which measurement produced it: perplexity, quantize, memory, ...
    name: str
    value: float
    unit: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    corpus: str = ""
    corpus_hash: str = ""
    note: str = ""  # why value is NaN, when it is; or what it leaves out (quantized_weight_fraction)
    series: tuple[float, ...] = ()  # per-window parts of value, for the metrics that have them


@dataclass(frozen=True)
class TrialHeader:
    """What every row of one trial shares."""

    trial_key: str
    model_ref: str
    model_fingerprint: str
    method: str
    method_label: str
    params: dict[str, Any]
    device: str
    hardware: str
    hardware_fingerprint: str
    versions: dict[str, str]
    git_sha: str
    kernel: str = ""
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


def trial_table(header: TrialHeader, metrics: list[Metric], error: str | None = None) -> pa.Table:
    """Rows for one trial: one per metric, or a single failed row when `error` is given."""
    common = {
        "schema_version": SCHEMA_VERSION,
        "trial_key": header.trial_key,
        "created_at": header.created_at,
        "status": "failed" if error else "ok",
        "error": error or "",
        "model_ref": header.model_ref,
        "model_fingerprint": header.model_fingerprint,
        "method": header.method,
        "method_label": header.method_label,
        "params_json": _json(header.params),
        "device": header.device,
        "kernel": header.kernel,
        "hardware": header.hardware,
        "hardware_fingerprint": header.hardware_fingerprint,
        "versions_json": _json(header.versions),
        "git_sha": header.git_sha,
    }
    if error:
        rows = [{**common, "eval": "", "protocol_json": "{}", "corpus": "", "corpus_hash": "", "metric": "",
                 "value": None, "unit": "", "note": "", "series": None}]  # fmt: skip
    else:
        rows = [
            {
                **common,
                "eval": m.eval,
                "protocol_json": _json(m.protocol),
                "corpus": m.corpus,
                "corpus_hash": m.corpus_hash,
                "metric": m.name,
                "value": None if math.isnan(m.value) else float(m.value),  # null, not NaN: SQL averages skip it
                "unit": m.unit,
                "note": m.note,
                "series": [float(v) for v in m.series] or None,
            }
            for m in metrics
        ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)
