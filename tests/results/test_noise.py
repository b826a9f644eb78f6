"""The noise floor (the half-precision baseline's divergence) and the verdicts judged against it,
on synthetic divergence trials with per-window KL sums, and through the tables and exports."""

from pathlib import Path

import numpy as np
import pytest
from rows import PROTOCOL, T0, fill, trial

from quantbench.results.columns import display_table
from quantbench.results.export import export
from quantbench.results.noise import INDISTINGUISHABLE, noise_floors, verdicts, with_verdicts
from quantbench.results.query import Filters, query, wide
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import read_results, write_trial

STORE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"
WINDOWS, TOKENS = 8, 63
DIVERGENCE = {**PROTOCOL, "top_k": 64, "tail_samples": 64}


def _kld_trial(key, method, params, window_kld, day, corpus="builtin"):
    header = TrialHeader(
        trial_key=key, model_ref="tiny", model_fingerprint="fp-tiny", method=method,
        method_label=f"{method}:" + ",".join(f"{k}={v}" for k, v in params.items()), params=params, device="cpu",
        hardware="cpu: test", hardware_fingerprint="hw", versions={}, git_sha="abc", created_at=T0.replace(day=1 + day),
    )  # fmt: skip
    sums, n = np.asarray(window_kld, dtype=float), WINDOWS * TOKENS
    tags = {"protocol": {**DIVERGENCE, "corpus": corpus}, "corpus": corpus, "corpus_hash": f"hash-{corpus}"}
    metrics = [
        Metric("divergence", "kld_mean", float(sums.sum()) / n, "nats", **tags),
        Metric("divergence", "kld_mean_stderr", 0.001, "nats", **tags),
        Metric("divergence", "window_kld_sum", float(sums.sum()), "nats", **tags, series=tuple(sums)),
        Metric("divergence", "window_tokens", n, "tokens", **tags, series=(TOKENS,) * WINDOWS),
    ]
    return trial_table(header, metrics)


def _sums(rng, mean_per_token, spread=0.02):
    """Per-window KL sums: a shared per-window difficulty would cancel in a paired test, so each
    model gets its own window-level noise around `mean_per_token`."""
    return (mean_per_token + rng.normal(0, spread, WINDOWS)) * TOKENS


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(5)
    floor = _sums(rng, 0.1)
    # Above the floor by 0.004 nats per token on average, window by window ±0.02: within the noise.
    twin = floor + TOKENS * (0.004 + np.tile([0.02, -0.02], WINDOWS // 2))
    # Six times the floor, all of it in one window: a paired test on 8 windows cannot reject, nor
    # could it have told a difference the floor's size (its 95% margin is ~1.2 nats per token).
    loud = floor + TOKENS * np.array([4.0] + [0.0] * (WINDOWS - 1))
    for key, method, params, sums, day in [
        ("fp32", "baseline", {"compute_dtype": "float32"}, np.zeros(WINDOWS), 0),
        ("bf16old", "baseline", {"compute_dtype": "bfloat16"}, _sums(rng, 0.5), 1),
        ("bf16", "baseline", {"dtype": "bfloat16"}, floor, 2),  # the newest: the floor
        ("below", "rtn", {"bits": 8}, _sums(rng, 0.05), 3),
        ("twin", "torchao", {"bits": 8}, twin, 4),
        ("loud", "bnb", {"bits": 4}, loud, 4),
        ("far", "rtn", {"bits": 4}, _sums(rng, 0.4), 5),
        ("wiki", "rtn", {"bits": 8}, _sums(rng, 0.01), 6),
    ]:
        corpus = "wikitext2" if key == "wiki" else "builtin"
        write_trial(tmp_path, key, _kld_trial(key, method, params, sums, day, corpus))
    return tmp_path


def test_the_floor_is_the_newest_half_precision_baseline_of_each_group(store):
    floors = noise_floors(read_results(store).frame)
    assert list(floors) == ["tiny · builtin · batch_size=1 max_tokens=128 seq_len=32 tail_samples=64 top_k=64"]
    floor = next(iter(floors.values()))
    assert floor.trial_key == "bf16" and floor.stderr == 0.001
    assert floor.value == pytest.approx(read_results(store).frame.query("trial_key == 'bf16' and metric == 'kld_mean'")
                                        ["value"].iloc[0])  # fmt: skip


def test_verdicts_below_within_noise_and_beyond_the_floor(store):
    judged = verdicts(read_results(store).frame)
    assert judged.to_dict() == {
        "bf16": INDISTINGUISHABLE,  # the floor is at the floor
        "bf16old": "",
        "below": INDISTINGUISHABLE,
        "far": "",
        "fp32": INDISTINGUISHABLE,  # the original itself
        "twin": INDISTINGUISHABLE,  # not significantly above it: paired on the same windows
        "loud": "",  # not significantly above it either, but only because the windows cannot tell
    }  # "wiki" was measured on another corpus, which has no floor: no verdict


def test_without_window_sums_only_at_or_below_the_floor_counts(store):
    frame = read_results(store).frame
    frame = frame[~frame["metric"].isin(["window_kld_sum", "window_tokens"])]
    assert verdicts(frame)["twin"] == "" and verdicts(frame)["below"] == INDISTINGUISHABLE


def test_tables_and_exports_carry_the_verdict_even_when_a_filter_hides_the_floor(store, tmp_path):
    everything = read_results(store).frame
    rtn = query(store, Filters(method="rtn")).frame
    table = with_verdicts(wide(rtn), everything)
    shown = display_table(table).set_index("trial_key")["vs original"]
    assert shown.to_dict() == {"far": "", "below": INDISTINGUISHABLE, "wiki": ""}
    out = tmp_path / "out"
    text = export(rtn, "md", out, "t.md", everything=everything).read_text()
    assert text.count(INDISTINGUISHABLE) == 1 and "vs original" in text
    assert "vs_original" in export(rtn, "csv", out, "t.csv", everything=everything).read_text().splitlines()[0]
    assert INDISTINGUISHABLE not in export(rtn, "md", out, "alone.md").read_text()  # judged on rtn alone: no floor


def test_an_old_store_without_a_half_precision_baseline_has_no_verdict_column():
    frame = read_results(STORE_V1).frame
    assert noise_floors(frame) == {} and verdicts(frame).empty
    assert "vs original" not in display_table(with_verdicts(wide(frame), frame))


def test_a_floor_sized_standard_error_is_not_shown_as_zero(tmp_path):
    fill(tmp_path, trial("bf16", params={"compute_dtype": "bfloat16"},
                         metrics={"kld_mean": 0.0012, "kld_mean_stderr": 2.2e-5}),
         trial("fp32", metrics={"kld_mean": 0.0, "kld_mean_stderr": 0.0}))  # fmt: skip
    shown = display_table(wide(read_results(tmp_path).frame)).set_index("trial_key")["KLD"]
    assert shown.to_dict() == {"bf16": "0.0012 ± 2e-05", "fp32": "0.0000 ± 0.0000"}
