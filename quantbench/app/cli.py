"""The `quantbench` command line: run trials, list results, list methods.

User errors (QuantbenchError) print one line and exit with status 2; a failed trial is stored
and makes `run` exit with status 1; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.evals.perplexity import PerplexityParams
from quantbench.spec import DEFAULT_MODEL, DEVICES, EvalSpec, MethodSpec, ModelRef

PPL_DEFAULTS = PerplexityParams()
# Columns of the results table, in display order, with how to show them.
DISPLAY = {
    "perplexity": ("ppl", "{:.3f}"),
    "bits_per_byte": ("bits/byte", "{:.4f}"),
    "word_perplexity": ("word ppl", "{:.2f}"),
    "weight_bytes": ("weights MiB", lambda v: f"{v / 2**20:.1f}"),
    "bits_per_weight": ("bits/w", "{:.2f}"),
    "quantize_seconds": ("quant s", "{:.1f}"),
    "eval_tokens_per_second": ("eval tok/s", "{:.0f}"),
    "peak_rss_bytes": ("peak RSS MiB", lambda v: f"{v / 2**20:.0f}"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="quantize a model with one or more methods and evaluate each")
    run.add_argument("--model", default=DEFAULT_MODEL, help="embedded:NAME, a .gguf file, a model dir or a hub id")
    run.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    run.add_argument(
        "--method",
        action="append",
        help="name[:key=value,...], repeatable (default: baseline); see `quantbench methods`",
    )
    run.add_argument("--eval", action="append", help="comma list or repeatable: perplexity, ... (default: perplexity)")
    run.add_argument(
        "--corpus", default=PPL_DEFAULTS.corpus, help="builtin, wikitext2[:split], or a .txt/.jsonl/.parquet file"
    )
    run.add_argument("--seq-len", type=int, default=PPL_DEFAULTS.seq_len)
    run.add_argument("--stride", type=int, default=PPL_DEFAULTS.stride, help="sliding-window step (default: seq-len)")
    run.add_argument("--max-tokens", type=int, default=PPL_DEFAULTS.max_tokens, help="token budget (default: all)")
    run.add_argument("--batch-size", type=int, default=PPL_DEFAULTS.batch_size, help="windows per forward pass")
    run.add_argument("--device", default="cpu", choices=DEVICES)
    run.add_argument("--force", action="store_true", help="re-run trials already in the store")
    _store_arg(run)

    results = sub.add_parser("results", help="list the trials in the store")
    results.add_argument("--model", help="only this model reference")
    results.add_argument("--method", help="only this method name")
    results.add_argument("--status", choices=["ok", "failed"])
    _store_arg(results)

    sub.add_parser("methods", help="list quantization methods and whether they run here")
    return parser


def _store_arg(parser: argparse.ArgumentParser) -> None:
    from quantbench.results.store import default_store

    parser.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")


def cmd_run(args: argparse.Namespace) -> int:
    from quantbench.runner.trial import completed_keys, execute, plan_trial, prepare_trial

    _quiet_libraries()
    model = ModelRef(args.model, trust_remote_code=args.trust_remote_code)
    names = [name.strip() for text in args.eval or ["perplexity"] for name in text.split(",") if name.strip()]
    evals = [_eval_spec(name, args) for name in names]
    # Plan every trial before running any, so a typo in the last method fails in a second.
    specs = [plan_trial(model, MethodSpec.parse(m), evals, args.device) for m in args.method or ["baseline"]]
    done = set() if args.force else completed_keys(args.store)
    for spec in specs:
        if spec.key in done:
            print(f"[{spec.key}] {spec.method.label}: already in the store (use --force to re-run)", file=sys.stderr)
    prepared = [prepare_trial(spec, args.store) for spec in specs if spec.key not in done]
    failed = 0
    for trial in prepared:
        spec = trial.spec
        print(f"[{spec.key}] {spec.method.label} on {spec.model.ref} ({spec.device})", file=sys.stderr, flush=True)
        outcome = execute(trial, args.store)
        if outcome.status == "failed":
            failed += 1
            print(f"  FAILED: {outcome.error}", file=sys.stderr)
    _print_trials(args.store, keys={s.key for s in specs})
    return 1 if failed else 0


def _eval_spec(name: str, args: argparse.Namespace) -> EvalSpec:
    """An eval's parameters are the `run` flags named like its Params fields (unset flags keep defaults)."""
    from quantbench.evals.registry import get_eval

    fields = get_eval(name).Params.model_fields
    return EvalSpec(name, {k: v for k, v in vars(args).items() if k in fields and v is not None})


def cmd_results(args: argparse.Namespace) -> int:
    _print_trials(args.store, model=args.model, method=args.method, status=args.status)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from quantbench.backends.registry import BACKENDS, get_backend

    for name in BACKENDS:
        backend = get_backend(name)
        cpu = backend.check("cpu")
        params = ", ".join(f"{k}={f.default}" for k, f in backend.Params.model_fields.items())
        where = "available on cpu" if cpu.ok else f"not available on cpu: {cpu.reason}"
        version = backend.library_version() or "not installed"
        print(f"{name:10s} {backend.library or '-'} {version}\n           {where}\n           params: {params or '-'}")
    return 0


def _print_trials(store: Path, keys: set[str] | None = None, **filters: str | None) -> None:
    from quantbench.results.query import wide
    from quantbench.results.store import read_results

    contents = read_results(store)
    for problem in contents.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    table = wide(contents.frame)
    if keys is not None:
        table = table[table["trial_key"].isin(keys)]
    for column, wanted in {"model_ref": filters.get("model"), "status": filters.get("status")}.items():
        if wanted:
            table = table[table[column] == wanted]
    if filters.get("method"):
        table = table[table["method_label"].str.split(":").str[0] == filters["method"]]
    if table.empty:
        print(f"no trials in {store}" + (" match" if any(filters.values()) else ""))
        return
    shown = table[["trial_key", "status", "model_ref", "method_label", "device"]]
    shown = shown.rename(columns={"method_label": "method"})
    for metric, (title, fmt) in DISPLAY.items():
        if metric in table:
            render = fmt.format if isinstance(fmt, str) else fmt
            shown[title] = [("" if v != v else render(v)) for v in table[metric]]  # v != v: NaN
    print(shown.to_string(index=False))
    for _, row in table[table["status"] == "failed"].iterrows():
        print(f"{row['trial_key']} failed: {row['error'].splitlines()[0]}")


def _quiet_libraries() -> None:
    """Progress bars of every weight shard drown the results; keep warnings and errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


COMMANDS = {"run": cmd_run, "results": cmd_results, "methods": cmd_methods}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
