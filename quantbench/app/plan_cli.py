"""`quantbench plan`: will this model, quantized this way, fit this GPU at this context and batch?

Prints the memory breakdown, the catalog GPUs it fits on, and with `--gpu` the largest context
and batch that fit that card. Needs no torch for presets, paths and cached hub ids.
"""

from __future__ import annotations

import argparse

from quantbench.planner.estimate import (
    ATTENTION,
    DEVICES,
    KV_BYTES,
    Estimate,
    Workload,
    estimate,
    fits,
    largest_batch,
    largest_context,
)
from quantbench.planner.formats import DTYPE_BYTES, weight_format
from quantbench.planner.gpus import GIB, find_gpu
from quantbench.planner.presets import PRESETS
from quantbench.planner.source import load_architecture
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
        required=True,
        help=f"a preset ({', '.join(PRESETS)}), a model directory or config.json, "
        "a hub id in the local Hugging Face cache, or embedded:smollm2-135m",
    )
    parser.add_argument(
        "--method",
        default="baseline",
        help="method[:key=value,...], e.g. gptq, bnb:quant_type=fp4,double_quant=true, torchao:packing=intx "
        "(methods: baseline rtn bnb gptq awq hqq quanto torchao triton)",
    )
    parser.add_argument("--bits", type=int, help="bits per weight code (default: the method's own)")
    parser.add_argument("--group-size", type=int, help="weights per scale group; -1 = per row (gptq/awq/hqq)")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPE_BYTES), help="compute dtype of unquantized tensors (default bfloat16)"
    )
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence in the KV cache")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--kv-dtype", choices=tuple(KV_BYTES), default="fp16", help="KV-cache element type")
    parser.add_argument("--prefill-chunk", type=int, help="tokens per prefill forward (default: whole context)")
    parser.add_argument("--attention", choices=ATTENTION, default="sdpa", help="eager materializes scores")
    parser.add_argument("--device", choices=DEVICES, default="cuda", help="runtime overhead to add")
    parser.add_argument("--gpu", help='a catalog GPU, e.g. "RTX 4090": largest context and batch that fit it')
    return parser


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def format_breakdown(est: Estimate, source: str) -> str:
    arch, fmt, work = est.arch, est.fmt, est.workload
    lines = [
        f"model     {arch.name} ({source}): {parameter_count(arch) / 1e9:.3f} B parameters",
        f"          {arch.summary()}",
        f"method    {fmt.label}, compute dtype {fmt.dtype}",
        f"workload  context {work.context} × batch {work.batch}, KV cache {work.kv_dtype}, device {work.device}",
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


def run(args: argparse.Namespace) -> int:
    """Print the plan; QuantbenchError (bad input) propagates to the CLI, which prints it."""
    spec = MethodSpec.parse(args.method)
    params = dict(spec.params)
    for key, value in (("bits", args.bits), ("group_size", args.group_size), ("dtype", args.dtype)):
        if value is not None:
            params[key] = value
    fmt = weight_format(spec.name, params)
    arch, source = load_architecture(args.model)
    work = Workload(
        context=args.context,
        batch=args.batch,
        kv_dtype=args.kv_dtype,
        prefill_chunk=args.prefill_chunk,
        attention=args.attention,
        device=args.device,
    )
    gpu = find_gpu(args.gpu) if args.gpu else None  # before printing: a bad name prints nothing
    est = estimate(arch, fmt, work)
    print(format_breakdown(est, source))
    print()
    if gpu is None:
        print(format_fits(est))
        return 0
    headroom = gpu.memory_bytes - est.total
    verdict = f"fits, {_gib(headroom)} GiB free" if headroom >= 0 else f"does not fit: {_gib(-headroom)} GiB short"
    print(f"{gpu.name} ({gpu.memory_gib} GiB = {gpu.memory_bytes:,} bytes): {verdict}")
    context = largest_context(arch, fmt, work, gpu)
    limit = " (the model's limit)" if context == arch.max_context else ""
    print(
        f"  largest context at batch {work.batch}: {context:,} tokens{limit}"
        if context
        else f"  nothing fits at batch {work.batch}, even 1 token of context"
    )
    batch = largest_batch(arch, fmt, work, gpu)
    print(f"  largest batch at context {work.context}: {batch}")
    return 0
