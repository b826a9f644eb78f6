"""Which trials may be compared, and how they compare with a reference trial.

Two trials compare only when they measured the same model (fingerprint, not just the name)
and every eval they share ran on the same corpus content (hash) with the same protocol. Mixing
them is refused with the field that differs; charts instead draw each comparability group on
its own (`comparability_groups`).

Paired tests (`paired_difference`): two trials that compare were scored on the same tokens, so
their difference is judged on paired data, which cancels the variation of the text itself (a
hard passage is hard for both) and detects far smaller differences than two independent
standard errors would. The units are windows, not tokens: the store keeps each window's sum
(of NLL, KL, agreeing tokens) and token count, and sums per window cannot give the per-token
paired variance, while windows are also closer to independent than neighbouring tokens. The
difference of the per-token means is D = Σ(a_w − b_w) / Σ n_w; its standard error is the
ratio estimator's across windows, sqrt(W / (W − 1) · Σ (a_w − b_w − D n_w)²) / Σ n_w, and it is
significant when |D| exceeds the two-sided 95% quantile of Student's t with W − 1 degrees of
freedom times that error (the t, not the normal, because a short run has few windows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from quantbench.errors import QuantbenchError
from quantbench.results.columns import column, headline, stderr_of
from quantbench.results.query import wide

# Metrics shown as a ratio against the reference, and what the ratio is called. `better` in
# the column catalogue says which way round: lower-is-better metrics give reference / trial.
RATIOS = {
    "weight_bytes": "memory saved ×",
    "decode_tokens_per_second": "speed-up ×",
    "prefill_seconds": "prefill speed-up ×",
}


# Headline metric -> (eval, series metric of per-window sums, scale of a per-token mean to the
# unit shown, that unit). Perplexity is tested on the mean NLL, of which it is exp.
PAIRED = {
    "perplexity": ("perplexity", "window_nll_sum", 1.0, "mean NLL, nats"),
    "kld_mean": ("divergence", "window_kld_sum", 1.0, "nats"),
    "top1_agreement": ("divergence", "window_top1_agree", 100.0, "points"),
}
CONFIDENCE = 0.95


class WindowSums(NamedTuple):
    sums: np.ndarray  # per window: the sum of a per-token quantity
    tokens: np.ndarray  # per window: tokens scored


class PairedDifference(NamedTuple):
    mean_diff: float  # per-token mean of a minus that of b
    stderr: float
    significant: bool
    margin: float  # half-width of the 95% interval of mean_diff: the smallest difference the windows can tell


def paired_difference(a: WindowSums, b: WindowSums) -> PairedDifference:
    """Whether a's per-token mean differs from b's on the same windows (see the module docstring)."""
    if len(a.tokens) != len(b.tokens) or not np.array_equal(a.tokens, b.tokens):
        raise QuantbenchError(
            f"paired comparison needs the same windows: {len(a.tokens)} vs {len(b.tokens)} windows "
            f"of {int(np.sum(a.tokens))} vs {int(np.sum(b.tokens))} tokens"
        )
    windows, total = len(a.tokens), float(np.sum(a.tokens))
    diff = np.asarray(a.sums, dtype=float) - np.asarray(b.sums, dtype=float)
    mean = float(diff.sum()) / total
    if windows < 2:
        return PairedDifference(mean, math.nan, False, math.nan)
    residual = diff - mean * np.asarray(a.tokens, dtype=float)
    stderr = math.sqrt(windows / (windows - 1) * float(np.sum(residual**2))) / total
    critical = float(stats.t.ppf(0.5 + CONFIDENCE / 2, windows - 1))
    return PairedDifference(mean, stderr, bool(abs(mean) > critical * stderr), critical * stderr)


def window_sums(frame: pd.DataFrame, key: str, eval_name: str, metric: str) -> WindowSums | None:
    """The per-window sums a trial stored for `metric` of `eval_name`, or None (an older store, or
    an eval that did not run)."""
    if "series" not in frame:
        return None
    rows = frame[(frame["trial_key"] == key) & (frame["eval"] == eval_name)].set_index("metric")["series"]
    sums, tokens = rows.get(metric), rows.get("window_tokens")
    if sums is None or tokens is None or not len(sums):
        return None
    return WindowSums(np.asarray(sums, dtype=float), np.asarray(tokens, dtype=float))


def paired_metric(frame: pd.DataFrame, a: str, b: str, metric: str) -> PairedDifference | None:
    """Trial a minus trial b on a headline metric of PAIRED, in that metric's unit (mean NLL in
    nats for perplexity), or None when either trial lacks the per-window sums."""
    eval_name, series, scale, _ = PAIRED[metric]
    sums_a, sums_b = window_sums(frame, a, eval_name, series), window_sums(frame, b, eval_name, series)
    if sums_a is None or sums_b is None:
        return None
    diff = paired_difference(sums_a, sums_b)
    return PairedDifference(diff.mean_diff * scale, diff.stderr * scale, diff.significant, diff.margin * scale)


def render_paired(diff: PairedDifference) -> str:
    """ "within noise", or the difference with its standard error where it is beyond the noise."""
    if math.isnan(diff.stderr):
        return "untested (one window)"
    if not diff.significant:
        return "within noise"
    return f"{diff.mean_diff:+.4g} ± {diff.stderr:.2g}"


def resolve_keys(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """Full trial keys for exact keys or unique prefixes, in the order given."""
    known = sorted(set(frame["trial_key"])) if not frame.empty else []
    resolved = []
    for key in keys:
        matches = [k for k in known if k == key] or [k for k in known if k.startswith(key)]
        if not matches:
            raise QuantbenchError(f"no trial {key!r} in the store; `quantbench results` lists the trial keys")
        if len(matches) > 1:
            raise QuantbenchError(f"trial key prefix {key!r} is ambiguous: {', '.join(matches[:4])}")
        if matches[0] not in resolved:
            resolved.append(matches[0])
    return resolved


# Protocol fields that name what an eval measures rather than how: kv-eval trials of different caches
# compare (their KLDs share one baseline pass), as trials of different methods do.
TREATMENT_FIELDS = {"kv": ("kv_cache", "kv_group_size")}


def _signature(rows: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """eval -> (corpus name, corpus hash, protocol JSON without its treatment fields) of one trial's rows."""
    measured = rows[rows["eval"].fillna("") != ""].drop_duplicates("eval")
    return {
        r.eval: (r.corpus or "", r.corpus_hash or "", _protocol(r.eval, r.protocol_json)) for r in measured.itertuples()
    }


def _protocol(eval_name: str, protocol_json: str | None) -> str:
    if eval_name not in TREATMENT_FIELDS:
        return protocol_json or "{}"
    protocol = json.loads(protocol_json or "{}")
    return json.dumps({k: v for k, v in protocol.items() if k not in TREATMENT_FIELDS[eval_name]}, sort_keys=True)


def incomparability(frame: pd.DataFrame, a: str, b: str) -> str | None:
    """Why trials `a` and `b` do not compare (names the differing field), or None if they do."""
    rows_a, rows_b = frame[frame["trial_key"] == a], frame[frame["trial_key"] == b]
    fp_a, fp_b = rows_a["model_fingerprint"].iloc[0], rows_b["model_fingerprint"].iloc[0]
    if fp_a != fp_b:
        return (
            f"model_fingerprint differs ({rows_a['model_ref'].iloc[0]} {fp_a} vs {rows_b['model_ref'].iloc[0]} {fp_b})"
        )
    sig_a, sig_b = _signature(rows_a), _signature(rows_b)
    for name in sorted(sig_a.keys() & sig_b.keys()):
        (corpus_a, hash_a, proto_a), (corpus_b, hash_b, proto_b) = sig_a[name], sig_b[name]
        if hash_a != hash_b:
            return f"corpus_hash of {name} differs ({corpus_a} {hash_a} vs {corpus_b} {hash_b})"
        if proto_a != proto_b:
            pa, pb = json.loads(proto_a), json.loads(proto_b)
            diff = ", ".join(
                f"{k} {pa.get(k)} vs {pb.get(k)}" for k in sorted(pa.keys() | pb.keys()) if pa.get(k) != pb.get(k)
            )
            return f"protocol of {name} differs ({diff})"
    return None


def check_comparable(frame: pd.DataFrame, reference: str, keys: list[str]) -> None:
    for key in keys:
        why = incomparability(frame, reference, key) if key != reference else None
        if why:
            raise QuantbenchError(f"trials {reference} and {key} are not comparable: {why}")


def default_reference(frame: pd.DataFrame, keys: list[str]) -> str:
    """The `baseline` trial of the same model comparable with `keys[0]`; of several, the one
    with the most weight bytes (the unquantized float32 one), then the newest."""
    table = wide(frame)
    table = table[table["status"] == "ok"]
    model = frame.loc[frame["trial_key"] == keys[0], "model_fingerprint"].iloc[0]
    baselines = table[(table["method"] == "baseline") & (table["model_fingerprint"] == model)]
    comparable = [k for k in baselines["trial_key"] if incomparability(frame, k, keys[0]) is None]
    chosen = baselines[baselines["trial_key"].isin(comparable)]
    if chosen.empty:
        ref = frame.loc[frame["trial_key"] == keys[0], "model_ref"].iloc[0]
        raise QuantbenchError(
            f"no comparable baseline trial of {ref} in the store: run `quantbench run --method baseline` "
            "with the same eval settings, or pass --reference KEY"
        )
    if "weight_bytes" in chosen:
        chosen = chosen.sort_values(["weight_bytes", "created_at"], ascending=False, kind="stable")
    return str(chosen["trial_key"].iloc[0])


@dataclass(frozen=True)
class Comparison:
    reference: str
    table: pd.DataFrame  # one row per trial, the reference first; values and deltas as numbers
    renderers: dict[str, Callable[[Any], str]]  # how to show each column as text

    def text(self) -> pd.DataFrame:
        """Quantities as rows, trials as columns, every cell rendered (empty where absent)."""
        shown = pd.DataFrame(
            {name: [_show(render, v) for v in self.table[name]] for name, render in self.renderers.items()}
        )
        return shown.set_index("trial").rename(columns=lambda name: column(name).title).T


def paired_name(metric: str) -> str:
    """The comparison row of a paired test against the reference, e.g. "ppl: paired Δ (mean NLL, nats)"."""
    return f"{column(metric).title}: paired Δ ({PAIRED[metric][3]})"


def _show(render: Callable[[Any], str], value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return render(value)


def compare(frame: pd.DataFrame, keys: list[str], reference: str | None = None) -> Comparison:
    """Trials side by side with deltas against `reference` (default: see `default_reference`).

    Refuses failed trials and trials that are not comparable with the reference.
    """
    keys = resolve_keys(frame, keys)
    ref = resolve_keys(frame, [reference])[0] if reference else default_reference(frame, keys)
    order = [ref, *(k for k in keys if k != ref)]
    table = wide(frame).set_index("trial_key").loc[order]
    failed = table[table["status"] != "ok"]
    if not failed.empty:
        key = failed.index[0]
        raise QuantbenchError(
            f"trial {key} failed ({str(failed['error'].iloc[0]).splitlines()[0]}): nothing to compare"
        )
    check_comparable(frame, ref, order)

    out = pd.DataFrame({"trial": [f"{k[:8]} {table.at[k, 'method_label']}" for k in order]})
    renderers: dict[str, Callable[[Any], str]] = {"trial": str}
    out["trial_key"] = order
    out["device"] = table["device"].to_numpy()
    renderers.update(trial_key=str, device=str)
    for metric in _metrics(table):
        spec = column(metric)
        values = table[metric].to_numpy(dtype=float)
        base = values[0]
        out[metric] = values
        renderers[metric] = spec.render
        root, _, variant = metric.partition("@")
        if metric == "perplexity" or (metric.startswith("task:") and spec.better):
            out[f"Δ {metric}"] = values - base
            renderers[f"Δ {metric}"] = lambda v: f"{v:+.4g}"
        if metric == "perplexity":
            out[f"Δ% {metric}"] = (values - base) / base * 100
            renderers[f"Δ% {metric}"] = lambda v: f"{v:+.2f}%"
        if metric.startswith("task:") and spec.better and stderr_of(metric) in table:
            stderr = table[stderr_of(metric)].to_numpy(dtype=float)
            # Standard error of a difference of two independent estimates.
            sigma = (stderr**2 + stderr[0] ** 2) ** 0.5
            beyond = [None if math.isnan(s) else bool(abs(d) > s) for d, s in zip(values - base, sigma, strict=True)]
            out[f"{metric} Δ beyond stderr"] = beyond
            renderers[f"{metric} Δ beyond stderr"] = lambda v: "yes" if v else "no"
        if metric in PAIRED:
            paired = [None] + [paired_metric(frame, k, ref, metric) for k in order[1:]]
            if any(p is not None for p in paired):
                name = paired_name(metric)
                out[name] = paired
                renderers[name] = render_paired
        if not metric.startswith("task:") and stderr_of(metric) in table:
            out[stderr_of(metric)] = table[stderr_of(metric)].to_numpy(dtype=float)
            renderers[stderr_of(metric)] = spec.render
        if root in RATIOS:
            name = RATIOS[root] + (f" @{variant}" if variant else "")
            out[name] = base / values if column(root).better == "lower" else values / base
            renderers[name] = lambda v: f"{v:.2f}×"
    return Comparison(ref, out, renderers)


def _metrics(table: pd.DataFrame) -> list[str]:
    """Catalogue metrics, their variants and task scores present in the table, in display order."""
    tasks = sorted(str(c) for c in table.columns if str(c).startswith("task:") and table[c].notna().any())
    return [c.metric for c in headline(table)] + tasks


def default_keys(frame: pd.DataFrame) -> list[str]:
    """What Compare opens with: the newest model's baseline (see `default_reference`) followed by
    every ok trial of that model that compares with it, largest weights first; [] when the store
    has no ok trial or the newest model has no comparable baseline."""
    table = wide(frame)
    table = table[table["status"] == "ok"]
    if table.empty:
        return []
    same_model = table[table["model_fingerprint"] == table["model_fingerprint"].iloc[0]]  # wide(): newest first
    for key in same_model["trial_key"]:  # the newest trial may be on a corpus the baseline never saw
        try:
            reference = default_reference(frame, [key])
            break
        except QuantbenchError:
            continue
    else:
        return []
    if "weight_bytes" in same_model:
        same_model = same_model.sort_values(["weight_bytes", "trial_key"], ascending=[False, True], kind="stable")
    others = [k for k in same_model["trial_key"] if k != reference and incomparability(frame, reference, k) is None]
    return [reference, *others]


def comparability_groups(frame: pd.DataFrame, metric: str, by_hardware: bool = False) -> pd.Series:
    """A readable group label per trial key for the trials that measured `metric`.

    Trials share a label exactly when their rows of `metric` share model fingerprint, corpus
    hash and protocol (and hardware, for speed and memory, which depend on the machine).
    """
    rows = frame[frame["metric"] == metric].drop_duplicates("trial_key")
    if rows.empty:
        return pd.Series(dtype=str)
    fields = ["model_fingerprint", "corpus_hash", "protocol_json"] + (["hardware_fingerprint"] if by_hardware else [])
    rows = rows.fillna({f: "" for f in fields})
    keys = rows[fields[0]].astype(str).str.cat([rows[f].astype(str) for f in fields[1:]], sep="|")
    labels = {}
    for key, group in rows.groupby(keys, sort=True):
        first = group.iloc[0]
        protocol = {
            k: v for k, v in json.loads(first["protocol_json"] or "{}").items() if k != "corpus" and v is not None
        }
        parts = [first["model_ref"], first["corpus"] or "", " ".join(f"{k}={v}" for k, v in sorted(protocol.items()))]
        if by_hardware:
            parts.append(first["hardware"] or "")
        labels[key] = " · ".join(p for p in parts if p)
    # Two different fingerprints under one model name: tell them apart.
    clashes = pd.Series(labels).duplicated(keep=False)
    for key in clashes[clashes].index:
        labels[key] += f" [{key.split('|')[0][:8]}]"
    return pd.Series(keys.map(labels).to_numpy(), index=rows["trial_key"].to_numpy()).sort_index()
