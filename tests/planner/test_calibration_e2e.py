"""The planner against real trials (issue #8's calibration test): the embedded model quantized by
each CPU method, perplexity at two window lengths in one worker process per method, and the
planner's peak-RSS prediction for each eval within ±10% of what the trial measured, both sides
without the resident pages of code files (planner/calibrate.py, LESS_CODE). The whole peak is
not asserted: how much of libtorch's code is resident depends on how its file entered the page
cache (a freshly installed venv inside a full `make test` held ~155 MiB more than a quiet run,
with private memory equal within 30 MiB: docs/planner.md, "Calibration").

Tiny budgets: the corpus is cut to a few thousand characters (the perplexity eval tokenizes its
whole corpus, and that cost depends on the file, not the model; see bench/calibration.py) and
each length scores at most 1024 tokens.
"""

import pytest
from support import WIKITEXT_TEST

from quantbench.planner.calibrate import CPU_METHODS, LESS_CODE, compare
from quantbench.results.store import read_results
from quantbench.runner.executor import run_local
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

pytestmark = pytest.mark.slow

SEQ_LENS = (256, 1024)
TOLERANCE_PCT = 10


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    work = tmp_path_factory.mktemp("calibration")
    text = WIKITEXT_TEST.read_text(encoding="utf-8")
    corpus = work / "corpus.txt"
    corpus.write_text(text[: text.index("\n", 6000) + 1], encoding="utf-8")  # ~1,500 tokens
    evals = [EvalSpec("perplexity", {"corpus": str(corpus), "seq_len": n, "max_tokens": 1024}) for n in SEQ_LENS]
    specs = [plan_trial(ModelRef("embedded:smollm2-135m"), MethodSpec.parse(m), evals) for m in CPU_METHODS]
    outcomes = run_local(specs, work / "store")
    assert [o.status for o in outcomes] == ["ok"] * len(CPU_METHODS), [o.error for o in outcomes]
    out = compare(read_results(work / "store").frame)
    labels = {s.key: m for s, m in zip(specs, CPU_METHODS, strict=True)}
    out["label"] = out["trial_key"].map(labels)
    return out


@pytest.mark.parametrize("method", CPU_METHODS)
def test_peak_rss_is_predicted_within_10_percent(compared, method):
    rows = compared[(compared["label"] == method) & (compared["metric"] == LESS_CODE)]
    assert sorted(rows["seq_len"]) == list(SEQ_LENS)
    assert rows["predicted"].notna().all(), list(rows["note"])
    errors = dict(zip(rows["seq_len"], rows["error_pct"].round(1), strict=True))
    assert all(abs(e) <= TOLERANCE_PCT for e in errors.values()), f"{method}: error % by seq_len {errors}"


def test_weight_bytes_match_the_backends_count(compared):
    rows = compared[compared["metric"] == "weight_bytes"]
    assert len(rows) == len(CPU_METHODS)
    assert (rows["error_pct"].abs() < 0.1).all(), rows[["label", "error_pct"]].to_string()
