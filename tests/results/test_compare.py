import pytest
from rows import PROTOCOL, fill, trial

from quantbench.errors import QuantbenchError
from quantbench.results.columns import column
from quantbench.results.compare import comparability_groups, compare, default_keys
from quantbench.results.store import read_results


def test_deltas_against_the_default_baseline(mixed_store):
    comparison = compare(read_results(mixed_store).frame, ["bnb4"])
    assert comparison.reference == "base"
    row = comparison.table.set_index("trial_key").loc["bnb4"]
    assert row["Δ perplexity"] == pytest.approx(1.0)
    assert row["Δ% perplexity"] == pytest.approx(10.0)
    assert row["memory saved ×"] == pytest.approx(4.0)
    assert row["speed-up ×"] == pytest.approx(1.5)
    assert row["kld_mean"] == 0.05 and row["top1_agreement"] == 90.0
    text = comparison.text()
    assert list(text.columns) == ["base baseline:dtype=float32", "bnb4 bnb:bits=4,quant_type=nf4"]
    assert text.loc["Δ% perplexity"].tolist() == ["+0.00%", "+10.00%"]
    assert text.loc["memory saved ×"].tolist() == ["1.00×", "4.00×"]


def test_absent_metrics_stay_empty(mixed_store):
    comparison = compare(read_results(mixed_store).frame, ["bnb4", "hqq2"], reference="base")
    assert comparison.text().loc["speed-up ×"].tolist() == ["1.00×", "1.50×", ""]


def test_task_deltas_say_whether_they_exceed_the_stderr(tmp_path):
    fill(
        tmp_path,
        trial("base", metrics={"task:arc:acc": 0.50, "task:arc:acc_stderr": 0.01}),
        trial("near", "rtn", {"bits": 8}, metrics={"task:arc:acc": 0.49, "task:arc:acc_stderr": 0.01}),
        trial("far", "rtn", {"bits": 2}, metrics={"task:arc:acc": 0.40, "task:arc:acc_stderr": 0.01}),
    )
    table = compare(read_results(tmp_path).frame, ["near", "far"]).table.set_index("trial_key")
    assert table["Δ task:arc:acc"].to_dict() == pytest.approx({"base": 0, "near": -0.01, "far": -0.10})
    assert table["task:arc:acc Δ beyond stderr"].to_dict() == {"base": False, "near": False, "far": True}


def test_task_scores_with_a_filter_and_lower_is_better_measures(tmp_path):
    base = {"task:gsm:exact@strict": 0.30, "task:gsm:exact_stderr@strict": 0.01, "task:lambada:perplexity": 4.0}
    fill(
        tmp_path,
        trial("base", metrics={**base, "task:gsm:samples": 100}),
        trial("q", "rtn", {"bits": 3}, metrics={"task:gsm:exact@strict": 0.25, "task:gsm:exact_stderr@strict": 0.01,
                                                "task:lambada:perplexity": 5.0, "task:gsm:samples": 100}),
    )  # fmt: skip
    table = compare(read_results(tmp_path).frame, ["q"]).table.set_index("trial_key")
    assert table.at["q", "task:gsm:exact@strict Δ beyond stderr"]
    assert table.at["q", "Δ task:lambada:perplexity"] == 1.0
    assert "Δ task:gsm:samples" not in table


@pytest.mark.parametrize(
    ("metric", "better"),
    [("task:arc:acc", "higher"), ("task:arc:acc_stderr", ""), ("task:gsm:exact_stderr@strict", ""),
     ("task:arc:samples", ""), ("task:lambada:perplexity", "lower"), ("task:wikitext:bits_per_byte", "lower")],
)  # fmt: skip
def test_which_way_task_measures_are_better(metric, better):
    assert column(metric).better == better


def test_the_unquantized_baseline_is_preferred(tmp_path):
    fill(
        tmp_path,
        trial("bf16", params={"dtype": "bfloat16"}, metrics={"perplexity": 10.1, "weight_bytes": 2.0}, day=2),
        trial("fp32", metrics={"perplexity": 10.0, "weight_bytes": 4.0}),
        trial("q", "rtn", {"bits": 4}, metrics={"perplexity": 11.0, "weight_bytes": 1.0}),
    )
    assert compare(read_results(tmp_path).frame, ["q"]).reference == "fp32"
    assert compare(read_results(tmp_path).frame, ["bf16"]).reference == "fp32"


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            trial("x", "rtn", {"bits": 4}, metrics={"perplexity": 9.0}, fingerprint="fp-other"),
            "trials base and x are not comparable: model_fingerprint differs (tiny fp-tiny vs tiny fp-other)",
        ),
        (
            trial("x", "rtn", {"bits": 4}, metrics={"perplexity": 9.0}, corpus="wikitext2"),
            "trials base and x are not comparable: corpus_hash of perplexity differs "
            "(builtin hash-builtin vs wikitext2 hash-wikitext2)",
        ),
        (
            trial("x", "rtn", {"bits": 4}, metrics={"perplexity": 9.0}, protocol={**PROTOCOL, "seq_len": 64}),
            "trials base and x are not comparable: protocol of perplexity differs (seq_len 32 vs 64)",
        ),
    ],
)
def test_incomparable_trials_are_refused_naming_the_field(tmp_path, other, message):
    fill(tmp_path, trial("base", metrics={"perplexity": 10.0}), other)
    with pytest.raises(QuantbenchError) as err:
        compare(read_results(tmp_path).frame, ["x"], reference="base")
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("keys", "reference", "message"),
    [
        (["nope"], "base", "no trial 'nope' in the store"),
        (["b"], "base", "trial key prefix 'b' is ambiguous: base, bnb4, broke"),
        (["broke"], "base", "trial broke failed (RuntimeError: out of memory): nothing to compare"),
        (["hqq2"], "nope", "no trial 'nope' in the store"),
    ],
)
def test_bad_keys_are_one_line_errors(mixed_store, keys, reference, message):
    with pytest.raises(QuantbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare(read_results(mixed_store).frame, keys, reference)


def test_no_comparable_baseline_asks_for_a_reference(tmp_path):
    fill(
        tmp_path,
        trial("base", metrics={"perplexity": 10.0}),
        trial("w", "rtn", {"bits": 4}, corpus="wikitext2", metrics={"perplexity": 12.0}),
    )
    with pytest.raises(QuantbenchError, match="no comparable baseline trial of tiny in the store"):
        compare(read_results(tmp_path).frame, ["w"])


def test_comparability_groups_label_each_corpus_and_protocol(mixed_store):
    groups = comparability_groups(read_results(mixed_store).frame, "perplexity")
    assert groups.index.tolist() == ["base", "bnb4", "hqq2", "wiki"]
    assert groups["base"] == groups["bnb4"] == "tiny · builtin · batch_size=1 max_tokens=128 seq_len=32"
    assert groups["wiki"] == "tiny · wikitext2 · batch_size=1 max_tokens=128 seq_len=32"


def test_same_name_different_fingerprint_gets_told_apart(tmp_path):
    fill(tmp_path, trial("a", metrics={"perplexity": 1.0}), trial("b", metrics={"perplexity": 1.0}, fingerprint="zz"))
    groups = comparability_groups(read_results(tmp_path).frame, "perplexity")
    assert groups["a"].endswith("[fp-tiny]") and groups["b"].endswith("[zz]")


def test_speed_ups_per_batch_size_of_the_latency_eval(tmp_path):
    fast = {"decode_tokens_per_second@batch=16": 400.0, "decode_tokens_per_second@batch=4": 120.0}
    fill(
        tmp_path,
        trial("base", metrics={"decode_tokens_per_second@batch=16": 200.0, "decode_tokens_per_second@batch=4": 60.0}),
        trial("fast", "rtn", {"bits": 4}, metrics={**fast, "prefill_seconds@len=128": 0.5}),
    )
    text = compare(read_results(tmp_path).frame, ["fast"]).text()
    rows = [r for r in text.index if "batch" in r]
    assert rows == ["decode tok/s batch=4", "speed-up × @batch=4", "decode tok/s batch=16", "speed-up × @batch=16"]
    assert text.loc["speed-up × @batch=16"].tolist() == ["1.00×", "2.00×"]
    assert text.loc["prefill s len=128"].tolist() == ["", "0.500"]
    assert "prefill speed-up × @len=128" in text.index  # shown, empty where the reference lacks it


def test_compare_opens_with_the_newest_models_ok_trials_against_its_baseline(mixed_store):
    # The newest ok trial (wiki) ran on a corpus the baseline never saw: it cannot be compared, and
    # the failed trial has nothing to compare; the rest follow the baseline, largest weights first.
    frame = read_results(mixed_store).frame
    assert default_keys(frame) == ["base", "bnb4", "hqq2"]
    assert compare(frame, default_keys(frame)).reference == "base"


def test_the_newest_model_decides_and_without_a_baseline_there_is_no_default(tmp_path):
    fill(tmp_path, trial("old", metrics={"perplexity": 10.0}), trial("oldq", "rtn", {"bits": 4}, day=1,
                                                                      metrics={"perplexity": 11.0}))  # fmt: skip
    fill(tmp_path, trial("newb", fingerprint="fp-other", day=2, metrics={"perplexity": 8.0}),
         trial("newq", "rtn", {"bits": 8}, fingerprint="fp-other", day=3, metrics={"perplexity": 8.1}))  # fmt: skip
    assert default_keys(read_results(tmp_path).frame) == ["newb", "newq"]
    fill(tmp_path, trial("lone", "hqq", {"nbits": 4}, fingerprint="fp-lone", day=4, metrics={"perplexity": 9.0}))
    assert default_keys(read_results(tmp_path).frame) == []
    assert default_keys(read_results(tmp_path / "empty").frame) == []
