"""The `quantbench` command line: run trials, list results, list methods.

User errors (QuantbenchError) print one line and exit with status 2; a failed trial is stored
and makes `run` exit with status 1; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path

from quantbench.app import env_cli, plan_cli, recommend_cli, results_cli, sensitivity_cli
from quantbench.app.inputs import (
    DEFAULT_EVALS,
    default_help,
    duration,
    eval_specs,
    from_text,
    is_collection,
    parse_evals,
    unwrap_optional,
)
from quantbench.backends.registry import method_label
from quantbench.errors import QuantbenchError
from quantbench.evals.registry import EVALS, get_eval
from quantbench.results.query import Filters
from quantbench.runner.environment import quiet_library_logs
from quantbench.spec import DEFAULT_MODEL, DEVICES, EvalSpec, MethodSpec, ModelRef

# Which eval parameter each `run` flag sets, and in which evals: a flag sets one field, only in
# the evals listed. Perplexity and divergence score the same windows, so the window flags set
# both; `--batch-size` is windows per forward pass there, and `--task-batch-size` is lm-eval's
# requests per pass (the same field name in TasksParams, another knob). Every other parameter:
# `--eval NAME:KEY=VALUE,...`, which wins over a flag.
WINDOWS = ("perplexity", "divergence")
EVAL_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "--corpus": (WINDOWS, "corpus"),
    "--seq-len": (WINDOWS, "seq_len"),
    "--stride": (WINDOWS, "stride"),
    "--max-tokens": (WINDOWS, "max_tokens"),
    "--batch-size": (WINDOWS, "batch_size"),
    "--protocol": (WINDOWS, "protocol"),
    "--top-k": (("divergence",), "top_k"),
    "--prompt-lengths": (("latency",), "prompt_lengths"),
    "--batch-sizes": (("latency",), "batch_sizes"),
    "--new-tokens": (("latency",), "new_tokens"),
    "--repeats": (("latency",), "repeats"),
    "--tasks": (("tasks",), "tasks"),
    "--task-data": (("tasks",), "task_data"),
    "--limit": (("tasks",), "limit"),
    "--num-fewshot": (("tasks",), "num_fewshot"),
    "--task-batch-size": (("tasks",), "batch_size"),
}
EVAL_FLAGS_HELP = (
    "Eval parameters: each flag below sets one field of the evals it names (and no other); any "
    "field without a flag: --eval NAME:KEY=VALUE,... (it wins over a flag). Unset: the eval's default."
)


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
    run.add_argument(
        "--eval",
        action="append",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"comma list or repeatable: {', '.join(EVALS)} (default: {','.join(DEFAULT_EVALS)}); "
        "e.g. perplexity,latency:new_tokens=8,repeats=2",
    )
    run.add_argument("--device", default="cpu", choices=DEVICES)
    _eval_flags(run.add_argument_group("eval parameters", EVAL_FLAGS_HELP))
    _execution_args(run)

    sweep = sub.add_parser("sweep", help="run every trial of a sweep file (YAML), resuming what is done")
    sweep.add_argument("file", type=Path, help="see examples/sweep-cpu.yaml")
    _execution_args(sweep)

    results = sub.add_parser("results", help="list the trials in the store")
    results_cli.add_store_and_filters(results)

    sub.add_parser("methods", help="list quantization methods and whether they run here")
    log = sub.add_parser("log", help="print a trial's log: what its libraries printed while it ran")
    log.add_argument("key", help="the trial key, as `quantbench results` lists it")
    _store_arg(log)
    results_cli.add_parsers(sub)
    plan_cli.add_parser(sub)
    recommend_cli.add_parser(sub)
    env_cli.add_parser(sub)
    sensitivity_cli.add_parsers(sub, _execution_args)

    ui = sub.add_parser("ui", help="the browser dashboard (Gradio), on 127.0.0.1 unless --public")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s: this machine)")
    ui.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    ui.add_argument("--auth", metavar="USER:PASS", help="require this login in the browser")
    ui.add_argument("--public", action="store_true", help="allow a --host other than localhost, e.g. 0.0.0.0")
    _store_arg(ui)
    return parser


def _execution_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="re-run trials already in the store")
    parser.add_argument("--timeout", type=float, help="seconds per trial before its worker is killed")
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="ray: one Ray task per trial")
    parser.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    _store_arg(parser)


def _eval_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per EVAL_FLAGS entry; its type, help and shown default come from the Params field
    (no argparse default: an unset flag leaves the eval's own)."""
    for flag, (evals, field) in EVAL_FLAGS.items():
        info = get_eval(evals[0]).Params.model_fields[field]
        options: dict = {"help": f"{', '.join(evals)}: {default_help(info)}"}
        kind = unwrap_optional(info.annotation)
        if is_collection(info):
            options["type"] = _text_reader(flag, info)
            if typing.get_origin(kind) is dict:
                options["action"] = "append"  # TASK=FILE, repeatable as well as comma-separated
        elif kind in (int, float):
            options["type"] = kind
        group.add_argument(flag, **options)


def _text_reader(flag: str, info):
    def read(text: str):
        try:
            return from_text(info, text)
        except QuantbenchError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = flag  # argparse names the type in its own messages
    return read


def _store_arg(parser: argparse.ArgumentParser) -> None:
    from quantbench.results.store import default_store

    parser.add_argument("--store", type=Path, default=default_store(), help="results directory (default: %(default)s)")


def cmd_run(args: argparse.Namespace) -> int:
    from quantbench.runner.trial import plan_trial

    quiet_library_logs()
    model = ModelRef(args.model, trust_remote_code=args.trust_remote_code)
    evals = run_evals(args)
    # Plan every trial before running any, so a typo in the last method fails in a second.
    specs = [plan_trial(model, MethodSpec.parse(m), evals, args.device) for m in args.method or ["baseline"]]
    return _run_specs(specs, args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from quantbench.runner.sweep import load_sweep

    quiet_library_logs()
    sweep, specs = load_sweep(args.file)
    print(f"{args.file}: {len(specs)} trials", file=sys.stderr)
    return _run_specs(specs, args, timeout_s=args.timeout or sweep.timeout_s)


def _run_specs(specs: list, args: argparse.Namespace, timeout_s: float | None = None) -> int:
    options = dict(force=args.force, timeout_s=timeout_s or args.timeout, on_event=_print_event)
    if args.executor == "ray":
        from quantbench.runner.ray_executor import run_ray

        outcomes = run_ray(specs, args.store, address=args.address, **options)
    else:
        from quantbench.runner.executor import run_local

        outcomes = run_local(specs, args.store, **options)
    _print_trials(args.store, keys={s.key for s in specs})
    statuses = {o.status for o in outcomes}
    return 2 if "error" in statuses else 1 if "failed" in statuses else 0


def _print_event(event) -> None:
    spec = event.spec
    if event.kind == "progress":
        _print_progress(event)
        return
    if _progress_line["open"]:  # finish the carriage-return line before a normal one
        print(file=sys.stderr)
        _progress_line["open"] = False
    if event.kind == "cancelled":
        print(f"[{event.index}/{event.total}] {method_label(spec.method)}: cancelled", file=sys.stderr, flush=True)
    elif event.kind == "skipped":
        print(
            f"[{spec.key}] {method_label(spec.method)}: already in the store (use --force to re-run)", file=sys.stderr
        )
    elif event.kind == "started":
        _progress_line["printed_at"] = time.monotonic()
        where = f"{spec.model.ref} ({spec.device})"
        print(f"[{event.index}/{event.total}] {method_label(spec.method)} on {where} ...", file=sys.stderr, flush=True)
    else:
        outcome = event.outcome
        line = f"[{event.index}/{event.total}] {outcome.status} in {event.elapsed_s:.1f} s"
        if outcome.error:
            line += f": {outcome.error}"
        if event.eta_s:
            line += f"; about {duration(event.eta_s)} left"
        print(line, file=sys.stderr, flush=True)


# What an eval's progress counts, for the progress line.
PROGRESS_UNITS = {"perplexity": "windows", "divergence": "windows", "latency": "series", "tasks": "requests"}
PLAIN_PROGRESS_EVERY_S = 30.0  # without a terminal: at most one progress line per this, per trial
_progress_line = {"open": False, "printed_at": 0.0}


def _print_progress(event) -> None:
    """On a terminal, one line per trial redrawn in place (bar, counts, ETAs); otherwise a plain
    line only once a trial has run PLAIN_PROGRESS_EVERY_S since its last line, so a log shows a
    long stage is alive while a sweep of short trials stays two lines per trial (started, done)."""
    where = f"[{event.index}/{event.total}] {method_label(event.spec.method)} {event.stage}"
    if event.todo:
        units = PROGRESS_UNITS.get(event.stage, "")
        count = f"{event.done}/{event.todo} {units}".rstrip()
    else:
        count = f"{event.elapsed_s:.0f} s"
    etas = []
    if event.trial_eta_s is not None:
        etas.append(f"{event.stage} {duration(event.trial_eta_s)} left")
    if event.eta_s is not None:
        etas.append(f"sweep about {duration(event.eta_s)} left")
    tail = f" ({'; '.join(etas)})" if etas else ""
    if sys.stderr.isatty():
        bar = ""
        if event.todo:
            filled = round(20 * min(event.done, event.todo) / event.todo)
            bar = f" [{'#' * filled}{'.' * (20 - filled)}]"
        print(f"\r\033[K{where}{bar} {count}{tail}", end="", file=sys.stderr, flush=True)
        _progress_line["open"] = True
        return
    now = time.monotonic()
    if now - _progress_line["printed_at"] >= PLAIN_PROGRESS_EVERY_S:
        _progress_line["printed_at"] = now
        print(f"{where}: {count}{tail}", file=sys.stderr, flush=True)


def run_evals(args: argparse.Namespace) -> list[EvalSpec]:
    """The evals `run` was asked for, each with its `--eval` parameters and the flags that name it."""
    return eval_specs(parse_evals(args.eval or DEFAULT_EVALS), _flag_values(args))


def _flag_values(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """{eval: {field: value}} of the eval flags given (EVAL_FLAGS says where each goes)."""
    values: dict[str, dict[str, object]] = {}
    for flag, (evals, field) in EVAL_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if isinstance(value, list) and value and isinstance(value[0], list):  # an appended comma list
            value = [item for part in value for item in part]
        for name in evals if value is not None else ():
            values.setdefault(name, {})[field] = value
    return values


def cmd_results(args: argparse.Namespace) -> int:
    _print_trials(args.store, filters=results_cli.filters_from(args))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from quantbench.backends.registry import backend_names, get_backend, method_facts
    from quantbench.runner.envs import environment_line, runs_here

    for name in backend_names():
        backend = get_backend(name)
        cpu = backend.check("cpu")
        params = [f"{k}={f.default}: {f.description}" for k, f in backend.Params.model_fields.items()]
        where = "available on cpu" if cpu.ok else f"not available on cpu: {cpu.reason}"
        if not runs_here(backend) and backend.environment is not None:
            where = "runs in its own environment; the library is not in this one"
        version = backend.library_version() or "not installed"
        print(f"{name:10s} {backend.library or '-'} {version}\n           {where}\n           {method_facts(backend)}")
        if environment_line(backend):
            print(f"           {environment_line(backend)}")
        print("\n".join(f"           {line}" for line in params or ["no parameters"]))
    return 0


def _print_trials(store: Path, keys: set[str] | None = None, filters: Filters | None = None) -> None:
    from quantbench.results.columns import display_table
    from quantbench.results.noise import with_verdicts
    from quantbench.results.query import query, wide

    filters = filters or Filters()
    contents = query(store, filters)
    for problem in contents.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    everything = query(store).frame if filters.active() else contents.frame
    table = with_verdicts(wide(contents.frame), everything)
    if keys is not None:
        table = table[table["trial_key"].isin(keys)]
    if table.empty:
        print(f"no trials in {store}" + (" match" if filters.active() else ""))
        return
    print(display_table(table).to_string(index=False))
    for _, row in table[table["status"] == "failed"].iterrows():
        print(f"{row['trial_key']} failed: {row['error'].splitlines()[0]}")
    # A measured quantize fact with a note explains what the method did to the weights (gguf: which
    # types llama.cpp wrote where a row width refused the one asked for).
    rows = contents.frame
    noted = rows[(rows["eval"] == "quantize") & rows["value"].notna() & (rows["note"].fillna("") != "")]
    for row in noted[noted["trial_key"].isin(table["trial_key"])].itertuples():
        print(f"{row.trial_key} {row.metric}: {row.note}")


def cmd_log(args: argparse.Namespace) -> int:
    from quantbench.runner.trial_log import read_log

    sys.stdout.write(read_log(args.store, args.key))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    auth = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise QuantbenchError("--auth expects USER:PASS, both non-empty")
        auth = (user, password)
    try:
        from quantbench.app.ui import check_host, serve
    except ImportError as exc:
        raise QuantbenchError(f"the dashboard needs gradio: pip install 'quantbench[ui]' ({exc})") from None
    check_host(args.host, args.public)
    quiet_library_logs()
    serve(args.store, host=args.host, port=args.port, auth=auth, public=args.public)
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "results": cmd_results, "methods": cmd_methods, "ui": cmd_ui}
COMMANDS |= {"compare": results_cli.run_compare, "export": results_cli.run_export, "plan": plan_cli.run}
COMMANDS |= {"recommend": recommend_cli.run, "log": cmd_log}
COMMANDS |= {"env": env_cli.run}
COMMANDS |= {"sensitivity": sensitivity_cli.run_sensitivity, "recipe": sensitivity_cli.run_recipe}


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
