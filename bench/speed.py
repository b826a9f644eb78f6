"""Latency profile per method (decode tokens/s, prefill time, peak RSS) and the profiler's own overhead.

Each method runs in a fresh Python process (this script with --child), so one method's memory
never inflates the next one's peak RSS; `--rounds` passes over all methods in turn and each
figure is the median over them. Default: baseline on the embedded model, CPU.

    .venv/bin/python bench/speed.py --method baseline --method rtn:bits=4 [--new-tokens 8 --repeats 2]

Prints one JSON object (machine, versions, date, numbers) and the Markdown table used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time

import psutil
import torch

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.engines.protocol import engine_facts
from quantbench.evals import latency
from quantbench.runner import environment, envs
from quantbench.spec import MethodSpec, ModelRef, validate_params
from quantbench.trackers.clock import Clock, time_call
from quantbench.trackers.memory import PeakMemory

PROMPT_LENGTHS = (128, 512)
BATCH_SIZES = (1, 4)


def profile_method(model_ref: str, method_text: str, params: latency.LatencyParams) -> dict:
    """The latency eval's rows for one method, or why it could not run here."""
    method = MethodSpec.parse(method_text)
    backend = get_backend(method.name)
    availability = backend.check("cpu")
    if not availability.ok:
        return {"method": method_text, "skipped": availability.reason}
    source = models.resolve(ModelRef(model_ref))
    model = backend.quantize(source, validate_params(backend.Params, method.params, method.name), "cpu")
    rows = latency.run(model, params, None, source)
    facts = {name: value for name, value, *_ in engine_facts(model)}  # llama.cpp: its file's bytes, threads
    return {"method": method_text, "weight_bytes": model.weight_bytes, "bits_per_weight": model.bits_per_weight,
            "engine_facts": facts, "metrics": {n: v for n, v, _ in rows}}  # fmt: skip


def profiler_overhead(model_ref: str, rounds: int) -> dict:
    """What measuring costs: one clock reading around a no-op, one per-token stamp, one RSS sample,
    and a prefill workload timed with and without the RSS sampler running (rounds interleaved)."""
    clock = Clock()
    noop = [time_call(lambda: None, clock) for _ in range(10_000)]
    stamps = latency.TokenStamps(clock)
    start = time.perf_counter()
    for _ in range(10_000):
        stamps()
    stamp_s = (time.perf_counter() - start) / 10_000
    process = psutil.Process()
    start = time.perf_counter()
    for _ in range(1_000):
        process.memory_info()
    rss_sample_s = (time.perf_counter() - start) / 1_000

    backend = get_backend("baseline")
    model = backend.quantize(models.resolve(ModelRef(model_ref)), backend.Params(), "cpu")
    ids = latency.prompt_ids(model, 1, 16)  # short: the ratio matters, not the size

    def workload() -> float:
        start = time.perf_counter()
        for _ in range(10):
            latency.prefill_seconds(model, ids, clock)
        return time.perf_counter() - start

    with torch.inference_mode():
        workload()  # warm-up
        plain, sampled = [], []
        for _ in range(rounds):
            plain.append(workload())
            with PeakMemory(kernel_mark=False):  # the sampler, where the kernel's mark cannot be reset
                sampled.append(workload())
    return {
        "clock_around_noop_ns": round(statistics.median(noop) * 1e9),
        "token_stamp_ns": round(stamp_s * 1e9),
        "rss_sample_us": round(rss_sample_s * 1e6, 1),
        "rss_sampler_duty_cycle": round(rss_sample_s / PeakMemory().interval_s, 5),
        "prefill_workload_s_without_sampler": round(statistics.median(plain), 4),
        "prefill_workload_s_with_sampler": round(statistics.median(sampled), 4),
        "sampler_overhead_fraction": round(statistics.median(sampled) / statistics.median(plain) - 1, 4),
    }


def _child(args: argparse.Namespace, what: str) -> dict:
    """Run one measurement in a fresh interpreter (the method's environment's, as a trial's worker) and
    return its JSON."""
    python = sys.executable if what == "overhead" else envs.worker_python(get_backend(MethodSpec.parse(what).name))
    cmd = [python, __file__, "--model", args.model, "--new-tokens", str(args.new_tokens)]
    cmd += ["--repeats", str(args.repeats), "--overhead-rounds", str(args.overhead_rounds), "--child", what]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=envs.worker_env(python))
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [""]
        return {"method": what, "failed": f"exit status {done.returncode}: {last[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])  # libraries may print above the child's JSON line


def combine_rounds(runs: list[dict]) -> dict:
    """One method's rounds as one result: each metric's median, and the decode rates' range."""
    done = [run for run in runs if "metrics" in run]
    if len(done) < len(runs):
        return next(run for run in runs if "metrics" not in run)
    names = set.intersection(*(set(run["metrics"]) for run in done))
    result = {**done[0], "rounds": len(done)}
    result["metrics"] = {name: statistics.median(run["metrics"][name] for run in done) for name in sorted(names)}
    result["decode_tokens_per_second_range"] = {
        name: [min(run["metrics"][name] for run in done), max(run["metrics"][name] for run in done)]
        for name in sorted(names)
        if name.startswith("decode_tokens_per_second@")
    }
    return result


def markdown(results: list[dict]) -> str:
    titles = ["method", "weights MiB", *(f"prefill {n} ms" for n in PROMPT_LENGTHS)]
    titles += [*(f"decode b={b} tok/s" for b in BATCH_SIZES), "peak RSS MiB"]
    lines = ["| " + " | ".join(titles) + " |", "|---" + "|---:" * (len(titles) - 1) + "|"]
    for result in results:
        m = result.get("metrics")
        if m is None:
            lines.append(f"| {result['method']} | not run: {result.get('skipped') or result.get('failed')} |")
            continue
        # a length beyond the model's context was measured at the cap, under another name
        prefill = [_cell(m.get(f"prefill_seconds@len={n}"), 1e3) for n in PROMPT_LENGTHS]
        ranges = result.get("decode_tokens_per_second_range", {})
        decode = [_decode_cell(m, ranges, f"decode_tokens_per_second@batch={b}") for b in BATCH_SIZES]
        cells = [result["method"], f"{result['weight_bytes'] / 2**20:.1f}", *prefill, *decode]
        lines.append("| " + " | ".join([*cells, f"{m['inference_peak_rss_bytes'] / 2**20:.0f}"]) + " |")
    return "\n".join(lines)


def _cell(value: float | None, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.1f}"


def _decode_cell(metrics: dict, ranges: dict, name: str) -> str:
    """The median, and the slowest–fastest round beside it when there were several."""
    low, high = ranges.get(name, (None, None))
    cell = _cell(metrics.get(name))
    return cell if low is None or low == high else f"{cell} ({low:.1f}–{high:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--method", action="append", help="name[:key=value,...], repeatable (default: baseline)")
    parser.add_argument("--new-tokens", type=int, default=latency.LatencyParams().new_tokens)
    parser.add_argument("--repeats", type=int, default=latency.LatencyParams().repeats)
    parser.add_argument("--rounds", type=int, default=3, help="passes over all methods, interleaved")
    parser.add_argument("--overhead-rounds", type=int, default=5, help="0 skips the profiler's own cost")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one method (or "overhead") per process
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    params = latency.LatencyParams(
        prompt_lengths=PROMPT_LENGTHS, batch_sizes=BATCH_SIZES, new_tokens=args.new_tokens, repeats=args.repeats
    )
    environment.quiet_library_logs()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "overhead":
        print(json.dumps(profiler_overhead(args.model, args.overhead_rounds)))
        return
    if args.child:
        print(json.dumps(profile_method(args.model, args.child, params)))
        return

    methods = args.method or ["baseline"]
    # Rounds interleave the methods (A B C A B C ...) so that a slow minute of a shared machine
    # lands on every method alike; each figure is then the median over rounds.
    rounds = [[_child(args, method) for method in methods] for _ in range(args.rounds)]
    results = [combine_rounds(list(per_method)) for per_method in zip(*rounds, strict=True)]
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": environment.hardware("cpu"),
        "torch_threads": args.threads or torch.get_num_threads(),
        "versions": environment.versions(),
        "model": args.model,
        "protocol": params.model_dump(),
        "rounds": args.rounds,
        "methods": results,
        "profiler_overhead": _child(args, "overhead") if args.overhead_rounds else "not measured (--overhead-rounds 0)",
    }
    print(json.dumps(report, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
