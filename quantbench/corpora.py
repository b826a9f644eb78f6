"""Text sources for evaluation and calibration, each with a content hash.

A corpus is a list of documents (rows). References:
- `builtin`: the English help texts that ship with CPython (`pydoc_data`), so the default
  run needs no download;
- `wikitext2` / `wikitext2:validation` / `wikitext2:train`: WikiText-2 raw through `datasets`;
- a path to a `.txt` file (one row per line, newline kept, which reproduces the Hugging Face
  wikitext rows exactly for the raw `wiki.*.raw` files), a `.jsonl` file (the `text` field of
  each line) or a `.parquet` file (its `text` column).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError

# What a corpus reference may be, as `load_corpus` reads it (every corpus parameter's help says it).
CORPUS_FORMS = "builtin, wikitext2[:split], or a .txt/.jsonl/.parquet file"
SEPARATOR = "\n\n"  # how rows are joined for perplexity (the GPTQ-paper protocol)


@dataclass(frozen=True)
class Corpus:
    name: str
    rows: tuple[str, ...]

    @property
    def text(self) -> str:
        return SEPARATOR.join(self.rows)

    @property
    def content_hash(self) -> str:
        """sha256 of the joined text: equal hashes mean equal evaluation input."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_corpus(ref: str) -> Corpus:
    """Load a corpus by reference; raise QuantbenchError for anything unusable."""
    name, _, split = ref.strip().partition(":")
    if name == "builtin":
        return _checked(Corpus("builtin", _builtin_rows()))
    if name == "wikitext2":
        return _checked(Corpus(ref, _wikitext2_rows(split or "test")))
    path = Path(ref).expanduser()
    if not path.is_file():
        raise QuantbenchError(f"corpus {ref!r} not found: not 'builtin', not 'wikitext2[:split]', not an existing file")
    readers = {".txt": _txt_rows, ".raw": _txt_rows, ".jsonl": _jsonl_rows, ".parquet": _parquet_rows}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise QuantbenchError(f"corpus file {path}: unsupported type {path.suffix!r} (use .txt, .jsonl or .parquet)")
    return _checked(Corpus(str(path), reader(path)))


def _checked(corpus: Corpus) -> Corpus:
    if not any(row.strip() for row in corpus.rows):
        raise QuantbenchError(f"corpus {corpus.name!r} is empty")
    return corpus


def _builtin_rows() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(topics[key] for key in sorted(topics))


def _wikitext2_rows(split: str) -> tuple[str, ...]:
    if split not in ("test", "validation", "train"):
        raise QuantbenchError(f"wikitext2 split {split!r} unknown; use test, validation or train")
    try:
        import datasets
    except ImportError:
        raise QuantbenchError(
            "corpus 'wikitext2' needs the datasets package (pip install datasets), "
            "or pass a local copy with --corpus path/to/wiki.test.raw"
        ) from None
    try:
        data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as exc:  # offline or hub error: datasets raises many types
        raise QuantbenchError(
            f"cannot load wikitext2 through datasets ({str(exc).splitlines()[0][:200]}); "
            "pass a local copy with --corpus path/to/wiki.test.raw"
        ) from None
    return tuple(data["text"])


def _txt_rows(path: Path) -> tuple[str, ...]:
    return tuple(_read_text(path).splitlines(keepends=True))


def _jsonl_rows(path: Path) -> tuple[str, ...]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise QuantbenchError(f"corpus file {path}, line {number}: not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise QuantbenchError(f"corpus file {path}, line {number}: needs a string field 'text'")
        rows.append(record["text"])
    return tuple(rows)


def _parquet_rows(path: Path) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exc:  # pyarrow raises ArrowInvalid, KeyError, OSError for bad files
        raise QuantbenchError(f"corpus file {path}: cannot read a 'text' column ({exc})") from None
    return tuple(t for t in table.column("text").to_pylist() if isinstance(t, str))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise QuantbenchError(f"corpus file {path} looks binary (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuantbenchError(f"corpus file {path} is not UTF-8 text (byte {exc.start})") from None
