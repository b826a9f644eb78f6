"""`quantbench recommend`: the measured settings of a model that meet quality bounds and fit a GPU, ranked.

Each with its margins; the settings excluded and the bound each broke; and the sweep file that would
measure the settings the planner says fit but the store has not measured.

quantbench recommend --model M (--gpu NAME | --memory GIB) [--max-kld X] [--min-top1 P]
    [--max-ppl-increase PCT] [--max-task-drop PT] [--min-decode-tps N] [--write-sweep FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantbench.app.inputs import optional_number
from quantbench.errors import QuantbenchError
from quantbench.planner.estimate import DEVICES, KV_BYTES
from quantbench.results.recommend import DEFAULT_CANDIDATES, Bounds, Recommendation, Request, sweep_yaml
from quantbench.results.store import default_store

# flag -> (Bounds field, what it means); the values are read as text so a typo is one clear line.
BOUND_FLAGS = {
    "--max-kld": ("max_kld", "largest mean KL divergence from the unquantized model, nats"),
    "--min-top1": ("min_top1", "smallest top-1 agreement with the unquantized model, percent"),
    "--max-ppl-increase": ("max_ppl_increase_pct", "largest perplexity increase over the baseline trial, percent"),
    "--max-task-drop": ("max_task_drop_points", "largest accuracy drop of any task the baseline measured, points"),
    "--min-decode-tps": ("min_decode_tps", "slowest decode tokens/s at --batch (measured on the store's machine)"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `recommend` subcommand to a CLI's subparsers and return its parser."""
    parser = subparsers.add_parser(
        "recommend",
        help="the measured settings that meet quality bounds and fit a GPU or memory size, ranked",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--model", required=True, help="a model reference (or fingerprint) of the store's trials")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--gpu", help='a catalog GPU, e.g. "RTX 4090" (`quantbench plan` lists them)')
    target.add_argument("--memory", metavar="GIB", help="a memory size in GiB instead, e.g. the RAM for CPU")
    parser.add_argument("--device", choices=DEVICES, help="runtime to price (default: cuda with --gpu, cpu otherwise)")
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence in the KV cache")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--kv-dtype", choices=tuple(KV_BYTES), default="fp16", help="KV-cache element type")
    bounds = parser.add_argument_group("bounds (at least one quality bound)")
    for flag, (_, meaning) in BOUND_FLAGS.items():
        bounds.add_argument(flag, metavar="N", help=meaning)
    parser.add_argument(
        "--candidate",
        action="append",
        metavar="METHOD[:K=V,...]",
        help=f"a setting to price when the store lacks it, repeatable (default: {', '.join(DEFAULT_CANDIDATES)})",
    )
    parser.add_argument("--write-sweep", type=Path, metavar="FILE", help="write the sweep of unmeasured settings here")
    parser.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")
    return parser


def request_from(args: argparse.Namespace) -> Request:
    given = {field: optional_number(getattr(args, flag[2:].replace("-", "_")), flag) for flag, (field, _) in
             BOUND_FLAGS.items()}  # fmt: skip
    return Request(
        model=args.model,
        bounds=Bounds(**given),
        gpu=args.gpu,
        memory_gib=optional_number(args.memory, "--memory"),
        device=args.device,
        context=args.context,
        batch=args.batch,
        kv_dtype=args.kv_dtype,
        candidates=tuple(args.candidate) if args.candidate else DEFAULT_CANDIDATES,
    )


def format_recommendation(rec: Recommendation) -> str:
    from quantbench.results.recommend_view import RANKING, excluded_table, ranked_table, summary, unmeasured_table

    lines = [summary(rec), ""]
    ranked = ranked_table(rec)
    if ranked.empty:
        lines.append("no measured setting meets every bound")
    else:
        lines += [f"ranked ({RANKING}):", ranked.to_string(index=False)]
    excluded = excluded_table(rec)
    if not excluded.empty:
        lines += ["", "excluded:", excluded.to_string(index=False)]
    unmeasured = unmeasured_table(rec)
    if not unmeasured.empty:
        lines += ["", "fit the budget but not measured (enough) yet:", unmeasured.to_string(index=False)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the recommendation; QuantbenchError (bad input) propagates to the CLI, which prints it."""
    from quantbench.results.recommend import recommend
    from quantbench.results.store import read_results

    request = request_from(args)
    request.bounds.validate()  # before reading the store: a bad bound needs no trials to be reported
    request.budget()
    contents = read_results(args.store)
    for problem in contents.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    rec = recommend(contents.frame, request)
    print(format_recommendation(rec))
    if rec.sweep is not None:
        if args.write_sweep is None:
            print("\nwrite the sweep that measures them with --write-sweep FILE, then: quantbench sweep FILE")
        else:
            try:
                args.write_sweep.write_text(sweep_yaml(rec.sweep))
            except OSError as exc:
                raise QuantbenchError(f"cannot write {args.write_sweep}: {exc.strerror or exc}") from None
            print(f"\nwrote {args.write_sweep}: quantbench sweep {args.write_sweep}")
    return 0
