import datetime as dt

import pyarrow as pa
import pytest
from rows import T0, fill, trial

from quantbench.errors import QuantbenchError
from quantbench.results.query import Filters, parse_when, query, wide


@pytest.mark.parametrize(
    ("filters", "keys"),
    [
        (Filters(), {"base", "bnb4", "hqq2", "broke", "wiki"}),
        (Filters(method="bnb"), {"bnb4"}),
        (Filters(method="bnb:bits=4,quant_type=nf4"), {"bnb4"}),
        (Filters(bits=4), {"bnb4"}),
        (Filters(bits=2), {"hqq2"}),  # hqq names it nbits
        (Filters(bits=8), {"wiki"}),  # quanto weights=int8
        (Filters(bits=32), {"base"}),  # baseline dtype=float32
        (Filters(corpus="wikitext2"), {"wiki"}),
        (Filters(corpus="hash-builtin"), {"base", "bnb4", "hqq2"}),
        (Filters(status="failed"), {"broke"}),
        (Filters(model="fp-tiny", status="ok", device="cpu"), {"base", "bnb4", "hqq2", "wiki"}),
        (Filters(device="cuda"), set()),
        (Filters(since=T0 + dt.timedelta(days=1), until=T0 + dt.timedelta(days=3)), {"bnb4", "hqq2"}),
    ],
)
def test_filters_select_whole_trials(mixed_store, filters, keys):
    frame = query(mixed_store, filters).frame
    assert set(frame["trial_key"]) == keys if keys else frame.empty
    if "bnb4" in keys:  # the corpus filter keeps the trial's rows measured on no corpus too
        assert "weight_bytes" in set(frame.loc[frame["trial_key"] == "bnb4", "metric"])


def test_wide_is_one_row_per_trial_newest_first_with_bits(mixed_store):
    table = wide(query(mixed_store).frame)
    assert list(table["trial_key"]) == ["wiki", "broke", "hqq2", "bnb4", "base"]
    assert table.set_index("trial_key")["bits"].to_dict() == pytest.approx(
        {"wiki": 8, "broke": 3, "hqq2": 2, "bnb4": 4, "base": 32}
    )
    assert table.set_index("trial_key").at["bnb4", "perplexity"] == 11.0


def test_wide_keeps_the_largest_peak_of_several_evals(tmp_path):
    rows = trial("k", metrics={"peak_rss_bytes": 5.0, "perplexity": 3.0})
    later = trial("k", metrics={"peak_rss_bytes": 9.0})
    fill(tmp_path, pa.concat_tables([rows, later, rows.slice(0, 1)]))
    assert wide(query(tmp_path).frame).at[0, "peak_rss_bytes"] == 9.0


@pytest.mark.parametrize(
    ("text", "end_of_day", "expected"),
    [
        ("2026-11-02", False, dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)),
        ("2026-11-02", True, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc)),
        ("2026-11-02T10:30", True, dt.datetime(2026, 11, 2, 10, 30, tzinfo=dt.timezone.utc)),
        ("2026-11-02T10:30+02:00", False, dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.timezone.utc)),
    ],
)
def test_parse_when(text, end_of_day, expected):
    assert parse_when(text, "--since", end_of_day) == expected


def test_bad_dates_are_one_line_errors():
    with pytest.raises(QuantbenchError, match=r"^--since 'yesterday' is not a date: use YYYY-MM-DD"):
        parse_when("yesterday", "--since")
    with pytest.raises(QuantbenchError, match="is not before --until"):
        Filters(since=T0, until=T0)
