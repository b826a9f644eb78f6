import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quantbench.corpora import load_corpus
from quantbench.errors import QuantbenchError


def test_builtin_corpus_needs_no_download_and_has_a_stable_hash():
    first, second = load_corpus("builtin"), load_corpus("builtin")
    assert len(first.text) > 100_000
    assert first.content_hash == second.content_hash


def test_txt_rows_reproduce_the_hugging_face_wikitext_rows(wikitext_test):
    corpus = load_corpus(str(wikitext_test))
    assert len(corpus.rows) == 4358  # the row count of wikitext-2-raw-v1 test on the hub
    assert corpus.rows[1] == " = Robert Boulter = \n"
    assert corpus.text.startswith(" \n\n\n = Robert Boulter = \n\n\n")


def test_jsonl_and_parquet_read_the_text_field(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate("ab")))
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "c.parquet")
    assert load_corpus(str(tmp_path / "c.jsonl")).rows == ("a", "b")
    assert load_corpus(str(tmp_path / "c.parquet")).rows == ("a", "b")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"\n  \n\n", "is empty"),
        ("binary.txt", b"\x00\x01\x02 hello", "looks binary"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "is not UTF-8"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', "line 2: not valid JSON"),
        ("notext.jsonl", b'{"body": "a"}\n', "needs a string field 'text'"),
        ("table.csv", b"text\nhello\n", "unsupported type '.csv'"),
        ("broken.parquet", b"PAR1 not really", "cannot read a 'text' column"),
    ],
)
def test_unusable_corpus_files_give_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(QuantbenchError, match=message) as err:
        load_corpus(str(tmp_path / name))
    assert "\n" not in str(err.value)


def test_missing_corpus_says_what_was_tried():
    with pytest.raises(QuantbenchError, match="not 'builtin', not 'wikitext2"):
        load_corpus("/nonexistent/corpus.txt")


def test_unknown_wikitext_split():
    with pytest.raises(QuantbenchError, match="split 'dev' unknown"):
        load_corpus("wikitext2:dev")
