"""`quantbench compare` and `quantbench export`, and the trial filters they share with `results`.

quantbench compare [KEY ...] [--reference KEY]
quantbench export --format md|csv|parquet|latex|json|html|png --out PATH [--dir DIR] [filters]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantbench.results.export import FORMATS
from quantbench.results.query import Filters, parse_when
from quantbench.results.store import StoreContents, default_store


def add_store_and_filters(parser: argparse.ArgumentParser) -> None:
    """`--store` and the trial filters (see `quantbench.results.query.Filters`)."""
    parser.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")
    parser.add_argument("--model", help="only this model reference or fingerprint")
    parser.add_argument("--method", help="only this method name (bnb) or full label (bnb:bits=4,...)")
    parser.add_argument("--bits", type=float, help="only this nominal bit width (bits, nbits, int4, bfloat16 -> 16)")
    parser.add_argument("--device", help="only trials run on this device")
    parser.add_argument("--corpus", help="only trials measured on this corpus name or content hash")
    parser.add_argument("--since", help="only trials created on or after this date (YYYY-MM-DD[THH:MM], UTC)")
    parser.add_argument("--until", help="only trials created on or before this date")
    parser.add_argument("--status", choices=["ok", "failed"])


def filters_from(args: argparse.Namespace) -> Filters:
    return Filters(
        model=args.model,
        method=args.method,
        bits=args.bits,
        device=args.device,
        corpus=args.corpus,
        since=parse_when(args.since, "--since") if args.since else None,
        until=parse_when(args.until, "--until", end_of_day=True) if args.until else None,
        status=args.status,
    )


def read_filtered(args: argparse.Namespace) -> StoreContents:
    """The store's rows of the trials the filters select; warns on stderr about unreadable files."""
    from quantbench.results.query import query

    contents = query(args.store, filters_from(args))
    for problem in contents.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    return contents


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `compare` and `export` to a CLI's subparsers."""
    compare = subparsers.add_parser(
        "compare", help="trials side by side with deltas against a reference (default: the model's baseline)"
    )
    compare.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="trial keys or unique prefixes (see `results`); none: every ok trial of the newest model",
    )
    compare.add_argument("--reference", metavar="KEY", help="trial to compare against (default: baseline)")
    compare.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")

    export = subparsers.add_parser("export", help="write the selected trials as a table, report or chart image")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="file to write, inside --dir")
    export.add_argument("--dir", type=Path, default=Path.cwd(), help="directory exports are confined to (default: .)")
    export.add_argument(
        "--chart",
        default="pareto",
        help="chart for png: pareto (default), footprint (vs estimated memory), bits, throughput, prefill, memory",
    )
    add_store_and_filters(export)


def run_compare(args: argparse.Namespace) -> int:
    from quantbench.errors import QuantbenchError
    from quantbench.results.compare import compare, default_keys
    from quantbench.results.store import read_results

    contents = read_results(args.store)
    for problem in contents.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    keys = args.keys or default_keys(contents.frame)
    if not keys:
        raise QuantbenchError(
            f"no ok trial in {args.store} has a comparable baseline: name the trials (`quantbench results` lists them)"
        )
    comparison = compare(contents.frame, keys, args.reference)
    print(f"reference: {comparison.reference}")
    print(comparison.text().to_string())
    return 0


def run_export(args: argparse.Namespace) -> int:
    from quantbench.results.export import export
    from quantbench.results.query import query

    frame = read_filtered(args).frame
    active = filters_from(args).active()
    if frame.empty:
        print(f"no trials in {args.store}" + (" match" if active else ""), file=sys.stderr)
        return 1
    everything = query(args.store).frame if active else frame
    path = export(frame, args.format, args.dir, args.out, chart=args.chart, everything=everything)
    print(f"wrote {path} ({frame['trial_key'].nunique()} trials)")
    return 0
