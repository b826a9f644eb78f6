"""`quantbench plan`: will this model, quantized this way, fit this GPU at this context and batch?

Prints the memory breakdown, the catalog GPUs it fits on, and with `--gpu` the largest context
and batch that fit that card. Each method's bytes come from its backend's storage layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from quantbench.backends.registry import backend_names
from quantbench.errors import QuantbenchError
from quantbench.planner.calibrate import NOTHING_MEASURED, compare, error_by_method
from quantbench.planner.estimate import ATTENTION, DEVICES, KV_BYTES, Estimate, Workload, fits
from quantbench.planner.finetune import TARGETS, Lora
from quantbench.planner.formats import DTYPES
from quantbench.planner.gpus import GIB
from quantbench.planner.plan import make_plan
from quantbench.planner.presets import PRESETS
from quantbench.planner.weights import parameter_count
from quantbench.spec import MethodSpec


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `plan` subcommand to a CLI's subparsers and return its parser."""
    parser = subparsers.add_parser(
        "plan",
        help="estimate the GPU memory a model needs with a method, context and batch",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--model",
        help=f"(required unless --calibrate) a preset ({', '.join(PRESETS)}), a model directory or config.json, "
        "a hub id in the local Hugging Face cache, or embedded:smollm2-135m",
    )
    parser.add_argument(
        "--method",
        default="baseline",
        help="method[:key=value,...] with the method's own parameters (`quantbench methods`), e.g. gptq, "
        f"bnb:quant_type=fp4,double_quant=true, quanto:weights=int4 (methods: {' '.join(backend_names())})",
    )
    parser.add_argument("--bits", type=int, help="bits per weight code (default: the method's own)")
    parser.add_argument("--group-size", type=int, help="weights per scale group; -1 = per row (rtn/triton/gptq/awq)")
    parser.add_argument("--dtype", choices=DTYPES, help="compute dtype of unquantized tensors (default bfloat16)")
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence in the KV cache")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--kv-dtype", choices=tuple(KV_BYTES), default="fp16", help="KV-cache element type")
    parser.add_argument("--prefill-chunk", type=int, help="tokens per prefill forward (default: whole context)")
    parser.add_argument("--attention", choices=ATTENTION, default="sdpa", help="eager materializes scores")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cuda",
        help="runtime overhead to add, and the layout a method picks there (torchao 4-bit)",
    )
    parser.add_argument("--gpu", help='a catalog GPU, e.g. "RTX 4090": largest context and batch that fit it')
    parser.add_argument(
        "--finetune",
        choices=("lora",),
        help="price a LoRA training step on the quantized base instead (QLoRA with --method bnb:bits=4); "
        "--context is then the sequence length",
    )
    parser.add_argument("--lora-rank", type=int, default=Lora.rank, help="--finetune: adapter rank r")
    parser.add_argument(
        "--lora-targets",
        default=",".join(Lora.targets),
        help=f"--finetune: projections that get adapters, comma-separated ({','.join(TARGETS)})",
    )
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="--finetune: keep block inputs only, recompute in backward"
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        metavar="STORE",
        help="instead of planning: compare the planner with every memory peak measured in a results store",
    )
    return parser


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def format_breakdown(est: Estimate, source: str) -> str:
    arch, fmt, work = est.arch, est.fmt, est.workload
    lines = [
        f"model     {arch.name} ({source}): {parameter_count(arch) / 1e9:.3f} B parameters",
        f"          {arch.summary()}",
        f"method    {fmt.label}, compute dtype {fmt.dtype}",
        f"workload  context {work.context} × batch {work.batch}, KV cache {work.kv_dtype}, device {work.device}"
        if work.use_cache
        else f"workload  one training step of batch {work.batch} × {work.context} tokens, device {work.device}",
    ]
    if arch.max_context and work.context > arch.max_context:
        lines.append(f"warning   context {work.context} exceeds the model's max_position_embeddings {arch.max_context}")
    width = max(len(c.name) for c in est.components)
    lines += ["", f"{'component':<{width}}  {'GiB':>7}  {'bytes':>15}  note"]
    lines += [f"{c.name:<{width}}  {_gib(c.bytes):>7}  {c.bytes:>15,}  {c.note}" for c in est.components]
    lines.append(f"{'total':<{width}}  {_gib(est.total):>7}  {est.total:>15,}")
    return "\n".join(lines)


def _wrap(label: str, items: list[str], width: int = 100) -> str:
    """`label: a, b, c` wrapped between items, so no GPU name is split across lines."""
    lines, line = [], f"{label}: "
    for i, item in enumerate(items or ["none"]):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + len(piece) > width and line.strip():
            lines.append(line.rstrip())
            line = "  "
        line += piece + " "
    return "\n".join([*lines, line.rstrip()])


def format_fits(est: Estimate) -> str:
    results = fits(est)
    yes = [f"{f.gpu.name} (+{_gib(f.headroom)})" for f in results if f.fits]
    no = [f"{f.gpu.name} ({f.gpu.memory_gib})" for f in results if not f.fits]
    return _wrap("fits on, GiB free", yes) + "\n" + _wrap("too small, GiB", no)


def format_calibration(frame: pd.DataFrame) -> str:
    """Per-trial predictions and the error per method and metric, for a results-store frame."""
    compared = compare(frame)
    if compared.empty:
        return NOTHING_MEASURED
    lines = [f"{'trial':<16}  {'method':<10} {'device':<6} {'metric':<24} {'measured':>15} {'predicted':>15}  error"]
    for r in compared.itertuples():
        predicted = "—" if pd.isna(r.predicted) else f"{r.predicted:,.0f}"
        error = r.note if pd.isna(r.error_pct) else f"{r.error_pct:+.1f}%"
        trial = f"{r.trial_key:<16}  {r.method:<10} {r.device:<6} {r.metric:<24}"
        lines.append(f"{trial} {r.measured:>15,.0f} {predicted:>15}  {error}")
    lines += ["", f"{'method':<10} {'metric':<24} {'trials':>6} {'mean error':>11} {'max |error|':>12}"]
    for r in error_by_method(compared).itertuples():
        lines.append(
            f"{r.method:<10} {r.metric:<24} {r.trials:>6} {r.mean_error_pct:>+10.1f}% {r.max_abs_error_pct:>11.1f}%"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the plan; QuantbenchError (bad input) propagates to the CLI, which prints it."""
    if args.calibrate is not None:
        from quantbench.results.store import read_results

        contents = read_results(args.calibrate)
        for problem in contents.skipped:
            print(f"skipped {problem}")
        if contents.frame.empty:
            raise QuantbenchError(f"no results in {args.calibrate}: run trials first, or pass --calibrate STORE")
        print(format_calibration(contents.frame))
        return 0
    if not args.model:
        raise QuantbenchError("plan needs --model (a preset, a model directory, or a hub id), or --calibrate STORE")
    spec = MethodSpec.parse(args.method)
    params = dict(spec.params)
    for key, value in (("bits", args.bits), ("group_size", args.group_size), ("compute_dtype", args.dtype)):
        if value is not None:
            params[key] = value
    work = Workload(
        context=args.context,
        batch=args.batch,
        kv_dtype=args.kv_dtype,
        prefill_chunk=args.prefill_chunk,
        attention=args.attention,
        device=args.device,
    )
    lora = None
    if args.finetune:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        lora = Lora(args.lora_rank, targets, args.grad_checkpointing)
    plan = make_plan(args.model, spec.name, params, work, args.gpu, lora)
    est = plan.estimate
    print(format_breakdown(est, plan.source))
    print()
    if plan.gpu is None:
        print(format_fits(est))
        return 0
    gpu, headroom = plan.gpu, plan.headroom
    verdict = f"fits, {_gib(headroom)} GiB free" if headroom >= 0 else f"does not fit: {_gib(-headroom)} GiB short"
    print(f"{gpu.name} ({gpu.memory_gib} GiB = {gpu.memory_bytes:,} bytes): {verdict}")
    context = plan.largest_context
    limit = " (the model's limit)" if context == est.arch.max_context else ""
    print(
        f"  largest context at batch {work.batch}: {context:,} tokens{limit}"
        if context
        else f"  nothing fits at batch {work.batch}, even 1 token of context"
    )
    print(f"  largest batch at context {work.context}: {plan.largest_batch}")
    return 0
