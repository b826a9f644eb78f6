"""An eval's rows become stored metrics: (name, value, unit[, note[, series]])."""

import math

import pytest

from quantbench.runner.trial import eval_metric

TAGS = {"protocol": {"seq_len": 32}, "corpus": "builtin", "corpus_hash": "h"}


@pytest.mark.parametrize(
    ("row", "note", "series"),
    [
        (("perplexity", 12.5, ""), "", ()),
        (("checkpoint_bytes", math.nan, "bytes", "not serializable"), "not serializable", ()),
        (("window_nll_sum", 6.0, "nats", "", (1.0, 2.0, 3.0)), "", (1.0, 2.0, 3.0)),
    ],
)
def test_rows_of_three_four_or_five_elements(row, note, series):
    metric = eval_metric("perplexity", row, TAGS)
    assert (metric.name, metric.unit, metric.note, metric.series) == (row[0], row[2], note, series)
    assert metric.corpus_hash == "h" and metric.protocol == {"seq_len": 32}
