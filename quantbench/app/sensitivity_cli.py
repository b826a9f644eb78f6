"""`quantbench sensitivity` (a per-unit map, run as a trial and stored) and `quantbench recipe` (bits per
unit from stored maps under a byte budget, in quantbench's, GPTQModel's and llama.cpp's formats)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from quantbench.runner.environment import quiet_library_logs
from quantbench.spec import DEFAULT_MODEL, EvalSpec, MethodSpec, ModelRef


def add_parsers(
    subparsers: argparse._SubParsersAction, execution_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add `sensitivity` and `recipe`; `execution_args` adds the flags every trial-running command takes."""
    sens = subparsers.add_parser(
        "sensitivity", help="KLD with one unit (block or projection) quantized at a time; prints the worst units"
    )
    sens.add_argument("--model", default=DEFAULT_MODEL, help="embedded:NAME, a model dir or a hub id")
    sens.add_argument(
        "--method", required=True, help="rtn, hqq or triton (source=rtn) with its parameters, e.g. rtn:bits=4"
    )
    sens.add_argument("--units", choices=("blocks", "projections"), default="blocks", help="what one unit is")
    sens.add_argument("--tokens", type=int, help="corpus tokens scored per unit (default: the eval's, 2048)")
    sens.add_argument("--seq-len", type=int, help="tokens per scored window (default: the eval's, 512)")
    sens.add_argument("--corpus", help="text the KLD is measured on (default: builtin)")
    sens.add_argument("--top", type=int, default=10, help="units to print, worst first")
    sens.add_argument("--device", default="cpu", help="cpu or cuda")
    execution_args(sens)

    recipe = subparsers.add_parser(
        "recipe", help="bits per unit from sensitivity maps under a byte budget (quantbench, GPTQModel, llama.cpp)"
    )
    recipe.add_argument(
        "--from-sensitivity",
        action="append",
        required=True,
        metavar="KEY",
        help="trial key (or prefix) of a stored map; repeat for each bit width the recipe may use",
    )
    budget = recipe.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="stored bits per weight of the mapped units, scales included")
    budget.add_argument("--weight-bytes", type=int, help="the whole model's weight bytes, unquantized tensors included")
    from quantbench.results.store import default_store

    recipe.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")


def run_sensitivity(args: argparse.Namespace) -> int:
    from quantbench.app.cli import _run_specs
    from quantbench.results.sensitivity_maps import top_offenders, unit_maps
    from quantbench.results.store import read_results
    from quantbench.runner.trial import plan_trial

    quiet_library_logs()
    params: dict[str, object] = {"units": args.units}
    if args.tokens is not None:
        params["max_tokens"] = args.tokens
    if args.seq_len is not None:
        params["seq_len"] = args.seq_len
    if args.corpus is not None:
        params["corpus"] = args.corpus
    spec = plan_trial(
        ModelRef(args.model), MethodSpec.parse(args.method), [EvalSpec("sensitivity", params)], args.device
    )
    status = _run_specs([spec], args)
    maps = unit_maps(read_results(args.store).frame)
    unit_map = maps[maps["trial_key"] == spec.key]
    if not unit_map.empty:
        floor = unit_map["floor"].iloc[0]
        print(f"\nworst {args.units} of {args.model} under {args.method} (KLD alone, nats; float floor {floor:.6f}):")
        for row in top_offenders(unit_map, args.top).itertuples():
            print(f"  {row.unit:<40} kld {row.kld:.6f}  top-1 {row.top1:.2f}%")
    return status


def run_recipe(args: argparse.Namespace) -> int:
    from quantbench.results.recipe import from_maps, render
    from quantbench.results.store import read_results

    quiet_library_logs()
    planned = from_maps(read_results(args.store).frame, args.from_sensitivity, args.avg_bits, args.weight_bytes)
    recipe = planned.recipe
    print(render(planned.method, planned.params, recipe))
    print(
        f"units: {recipe.unit_bytes} bytes of a {recipe.budget}-byte budget "
        f"({8 * recipe.unit_bytes / planned.unit_weights:.4f} bits per weight); "
        f"model weight bytes {planned.weight_bytes}; predicted KLD above the float floor {recipe.damage:.6f} nats"
    )
    return 0
