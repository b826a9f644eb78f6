"""The planner's calibration error on this machine: real trials of the embedded model, one per CPU
method, each scoring WikiText-2 perplexity at two window lengths; the peak RSS each perplexity eval
measured against the planner's prediction for that workload (planner/calibrate.py).

    .venv/bin/python bench/calibration.py --corpus ../shared/data/wikitext2/wiki.test.raw
    .venv/bin/python bench/calibration.py --report STORE    # the table of trials already run

Every trial runs in its own worker process (as `quantbench run` does), so each peak is the trial's
own. Prints one JSON object (machine, versions, date, rows) and the Markdown table of docs/planner.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import tempfile
from pathlib import Path

import pandas as pd

from quantbench.planner.calibrate import CPU_METHODS, LESS_CODE, compare
from quantbench.results.store import read_results
from quantbench.runner import environment
from quantbench.runner.executor import run_local
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef, TrialSpec

MODEL = "embedded:smollm2-135m"


def calibration_specs(methods: list[str], seq_lens: list[int], corpus: str, max_tokens: int) -> list[TrialSpec]:
    """One trial per method; its perplexity evals run in order of `seq_lens` inside that trial."""
    evals = [EvalSpec("perplexity", {"corpus": corpus, "seq_len": n, "max_tokens": max_tokens}) for n in seq_lens]
    return [plan_trial(ModelRef(MODEL), MethodSpec.parse(m), evals, "cpu") for m in methods]


def cut_corpus(source: Path, chars: int, out: Path) -> Path:
    """The first whole lines of `source` up to `chars` characters, written to `out`.

    The perplexity eval tokenizes its whole corpus before cutting it to max_tokens: on the 1.3 MB
    WikiText-2 test split that costs ~210 MiB of peak RSS (~180 MiB stays in glibc's heap), which
    depends on the corpus file, not on the model, and which the planner does not model. A corpus
    just longer than the token budget keeps the measured peak to what the planner predicts.
    """
    lines, size = [], 0
    with source.open(encoding="utf-8") as f:
        for line in f:
            if size >= chars:
                break
            lines.append(line)
            size += len(line)
    out.write_text("".join(lines), encoding="utf-8")
    return out


def rss_errors(store: Path) -> pd.DataFrame:
    """Per trial and window length: method label, measured and predicted peak RSS and error %,
    the peak's file-mapped and code-file shares, and the error without code pages on both sides."""
    frame = read_results(store).frame
    compared = compare(frame)
    rss = compared[compared["metric"] == "peak_rss_bytes"].copy()
    trials = frame.drop_duplicates("trial_key").reset_index(drop=True)  # in the order they ran
    rss["label"] = rss["trial_key"].map(trials.set_index("trial_key")["method_label"])
    rss["order"] = rss["trial_key"].map({key: i for i, key in enumerate(trials["trial_key"])})
    rss = rss.sort_values(["order", "seq_len"])
    keys = list(zip(rss["trial_key"], rss["seq_len"], strict=True))
    files = frame[frame["metric"] == "peak_rss_file_bytes"]  # absent in stores written before it existed
    seq_lens = files["protocol_json"].map(lambda text: json.loads(text).get("seq_len"))
    file_bytes = dict(zip(zip(files["trial_key"], seq_lens, strict=True), files["value"], strict=True))
    rss["file_mapped"] = [file_bytes.get(key, math.nan) for key in keys]
    # compare() already took each peak's code pages off in its LESS_CODE row: the code share is the difference
    less = compared[compared["metric"] == LESS_CODE].set_index(["trial_key", "seq_len"]).reindex(keys)
    rss["code"] = rss["measured"].to_numpy() - less["measured"].to_numpy()
    rss["error_less_code_pct"] = less["error_pct"].to_numpy()
    columns = ["label", "method", "seq_len", "measured", "file_mapped", "code", "predicted", "error_pct"]
    return rss[[*columns, "error_less_code_pct", "note"]]


def markdown(rss: pd.DataFrame) -> str:
    lines = [
        "| method | seq_len | measured MiB | of it file-mapped | of that code | predicted MiB | error "
        "| error without code pages |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rss.itertuples():
        lines.append(
            f"| `{r.label}` | {r.seq_len:.0f} | {r.measured / 2**20:,.1f} | {r.file_mapped / 2**20:,.1f} "
            f"| {r.code / 2**20:,.1f} | {r.predicted / 2**20:,.1f} | {r.error_pct:+.1f}% "
            f"| {r.error_less_code_pct:+.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="e.g. ../shared/data/wikitext2/wiki.test.raw (required unless --report)")
    parser.add_argument("--method", action="append", help=f"repeatable (default: {len(CPU_METHODS)} CPU methods)")
    parser.add_argument("--seq-len", type=int, action="append", help="repeatable (default: 256 and 1024)")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--corpus-chars", type=int, default=6000, help="cut the corpus (~4 chars per token)")
    parser.add_argument("--store", type=Path, help="results directory (default: a fresh temp dir)")
    parser.add_argument("--report", type=Path, help="only print the table of the trials already in this store")
    args = parser.parse_args()
    if args.report:
        if not args.report.is_dir():
            parser.error(f"--report {args.report}: no such results directory")
        print(markdown(rss_errors(args.report)))
        return
    if not args.corpus:
        parser.error("--corpus is required (or --report STORE)")

    work = Path(tempfile.mkdtemp(prefix="quantbench-calibration-"))
    store = args.store or work / "store"
    corpus = str(cut_corpus(Path(args.corpus), args.corpus_chars, work / "corpus.txt"))
    specs = calibration_specs(args.method or list(CPU_METHODS), args.seq_len or [256, 1024], corpus, args.max_tokens)
    outcomes = run_local(specs, store)
    rss = rss_errors(store)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "versions": environment.versions(),
        "corpus": f"{args.corpus} (first {args.corpus_chars} characters)",
        "max_tokens": args.max_tokens,
        "failed": [f"{o.spec.method.label}: {o.error}" for o in outcomes if o.status not in ("ok", "skipped")],
        "rows": json.loads(rss.to_json(orient="records")),
    }
    print(json.dumps(report, indent=2))
    print(markdown(rss))


if __name__ == "__main__":
    main()
