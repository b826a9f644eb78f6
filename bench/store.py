"""Time the results path a person waits on: query the store, pivot it wide, draw the Pareto chart;
and, with `--load`, the dashboard itself answering concurrent Results + Charts requests.

Builds a synthetic store of `--trials` trial files × `--metrics` metric rows (default 2,000 ×
50 = 100,000 rows, about what a trial with perplexity, divergence and a latency profile
writes), then times, `--repeats` times, a filtered query (DuckDB), the wide pivot, and the
quality-vs-size figure with its Pareto front serialized to JSON. The first query reads every
trial file and fills the query cache; it is reported on its own, the median is of the others.

With `--load`, it also starts `quantbench ui` on that store (a fresh cache dir each time), makes
one Results request (cold: it reads every trial file), then `--rounds` times adds one trial file,
as a running sweep does, and sends `--concurrent` Results and Charts requests at once (half each,
the page's default filters), each from its own visitor (session). It reports the p50 / p90 / max
latency of all those requests per start, the CPU seconds per burst of the server and of the
visitors (this process), and the p50 of one last burst once every view is computed (nothing new
in the store); each the median over `--repeats` starts.

A visitor asks as the page does (`--client browser`, the default): it joins the Gradio queue,
reads the event stream and parses the answer's JSON, nothing more; a browser does that natively,
in its own process. `--client gradio` asks through `gradio_client` instead, which also walks every
cell of the answer in Python looking for files, in this process, on the cores the server needs
(compare the two CPU figures). `--before DIR` (a checkout of an older commit) runs the same load
against that code too, interleaved with this checkout's, for a before/after comparison on the same
machine and moment.

    .venv/bin/python bench/store.py
    .venv/bin/python bench/store.py --load --repeats 3 --before /tmp/quantbench-old

Prints one JSON object (machine, versions, date, numbers) and the line used in README.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from quantbench.results.charts import quality_vs_size
from quantbench.results.query import Filters, query, wide
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import write_trial
from quantbench.runner import environment

METHODS = [("rtn", "bits"), ("gptq", "bits"), ("hqq", "nbits"), ("bnb", "bits")]


def fill_store(store: Path, trials: int, metrics: int) -> None:
    """Trial files as the runner writes them (without its fsync, which only slows the set-up)."""
    rng = random.Random(0)
    for i in range(trials):
        pq.write_table(synthetic_trial(i, metrics, rng), store / f"{i:016x}.parquet")


def synthetic_trial(i: int, metrics: int, rng: random.Random) -> pa.Table:
    """Trial number `i`'s rows, keyed `{i:016x}`."""
    protocol = {"corpus": "builtin", "seq_len": 2048, "max_tokens": None, "batch_size": 1, "stride": None}
    method, bits_key = METHODS[i % len(METHODS)]
    bits = rng.choice([2, 3, 4, 8])
    header = TrialHeader(
        trial_key=f"{i:016x}", model_ref=f"model-{i % 3}", model_fingerprint=f"fp{i % 3}", method=method,
        method_label=f"{method}:{bits_key}={bits}", params={bits_key: bits}, device="cpu", hardware="cpu",
        hardware_fingerprint="hw", versions={"torch": "x"}, git_sha="", kernel="k",
    )  # fmt: skip
    rows = [
        Metric("quantize", "weight_bytes", 1e8 * bits / 16 * rng.uniform(0.9, 1.1), "bytes"),
        Metric("quantize", "bits_per_weight", bits + 0.5, "bits"),
        Metric("perplexity", "perplexity", 10 + 40 / bits**2 * rng.uniform(0.8, 1.2), "", protocol, "builtin", "h"),
    ]
    rows += [Metric("latency", f"extra_{j}", rng.random(), "s", {"batch": 1}) for j in range(metrics - len(rows))]
    return trial_table(header, rows)


def time_once(store: Path) -> dict[str, float]:
    cpu = time.process_time()  # CPU time too: on a shared machine wall time also counts waiting for a core
    start = time.perf_counter()
    frame = query(store, Filters(status="ok")).frame
    read = time.perf_counter()
    table = wide(frame)
    pivot = time.perf_counter()
    quality_vs_size(frame).to_json()
    chart = time.perf_counter()
    assert len(frame) > 0 and len(table) > 0
    return {
        "query_s": read - start,
        "wide_s": pivot - read,
        "pareto_chart_s": chart - pivot,
        "total_s": chart - start,
        "total_cpu_s": time.process_time() - cpu,
    }


@contextlib.contextmanager
def serving(store: Path, code: Path, cache: Path) -> Iterator[tuple[str, int]]:
    """`quantbench ui` of the checkout at `code` serving `store` on a free loopback port: its URL and pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(code), "QUANTBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    args = ["ui", "--host", "127.0.0.1", "--port", str(port), "--store", str(store)]
    command = [sys.executable, "-m", "quantbench.app.cli", *args]
    proc = subprocess.Popen(
        command, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        for line in proc.stdout:
            if line.startswith("quantbench ui: http://"):
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
                yield line.split()[2], proc.pid
                return
        raise SystemExit(f"quantbench ui from {code} did not start (exit status {proc.wait()})")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


WARM_WAIT_S = 5.0  # longer than the dashboard's warm-up interval (app/ui/warm.py) plus one recomputation
ARGUMENTS = {  # the page's default filters
    "results": ["any", "any", ""],
    "chart": ["pareto", "perplexity", 4096, "any", ""],
    "trial_log": [""],
}


class Browser:
    """One visitor asking as the page's JavaScript does: join the queue, read the session's event
    stream until the answer, parse its JSON."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=300)
        self.session = uuid.uuid4().hex
        config = self.http.get("config").json()
        self.fn_index = {d.get("api_name"): d["id"] for d in config["dependencies"]}

    def predict(self, *data: object, api_name: str) -> list:
        joined = self.http.post("gradio_api/queue/join", json={
            "data": list(data), "fn_index": self.fn_index[api_name.lstrip("/")], "session_hash": self.session,
            "event_data": None, "trigger_id": None,
        })  # fmt: skip
        joined.raise_for_status()
        event = joined.json()["event_id"]
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed" and message.get("event_id") == event:
                    if not message.get("success"):
                        raise SystemExit(f"the dashboard failed {api_name}: {message.get('output')}")
                    return message["output"]["data"]
        raise SystemExit(f"the dashboard closed the event stream before answering {api_name}")


def visitor(url: str, client: str):
    """A Browser, or with `client == "gradio"` a gradio_client.Client (one session each)."""
    if client == "browser":
        return Browser(url)
    from gradio_client import Client

    return Client(url, verbose=False)


def request(client, endpoint: str) -> float:
    """One Results or Charts API call with the page's default filters; its seconds. A call whose
    error box is not empty stops the benchmark: a fast wrong answer is no answer."""
    start = time.perf_counter()
    out = client.predict(*ARGUMENTS[endpoint], api_name=f"/{endpoint}")
    box = out[-1]
    if (box.get("value") if isinstance(box, dict) else box) or not out[0]:
        raise SystemExit(f"the dashboard answered {endpoint} with an error: {box}")
    return time.perf_counter() - start


def dashboard_load(store: Path, code: Path, args: argparse.Namespace, next_key: list[int]) -> dict:
    """One start of the dashboard: its cold Results call, then `rounds` × (one new trial file, then
    `concurrent` requests at once): latencies over all those requests, and the CPU seconds per burst
    the server and this process (the visitors) spent; then one more burst with nothing new in the
    store, after the dashboard's warm-up thread has had time to run (every view already computed)."""
    import psutil

    rng = random.Random(next_key[0])
    with tempfile.TemporaryDirectory() as cache, serving(store, code, Path(cache)) as (url, pid):
        cold = request(visitor(url, args.client), "results")
        endpoints = ["results", "chart"] * (args.concurrent // 2)
        # One visitor (one session) per request, as that many browsers would be: threads sharing one
        # gradio_client race on its event stream (CancelledError).
        users = [visitor(url, args.client) for _ in endpoints]
        for user in users:  # as a browser has by the time it asks: its session (Gradio builds one per visitor)
            user.predict(*ARGUMENTS["trial_log"], api_name="/trial_log")
        server = psutil.Process(pid)

        def burst() -> list[float]:
            with ThreadPoolExecutor(args.concurrent) as pool:
                return list(pool.map(lambda user_endpoint: request(*user_endpoint), zip(users, endpoints, strict=True)))

        latencies, server_cpu, client_cpu = [], 0.0, 0.0
        for _ in range(args.rounds):
            write_trial(store, f"{next_key[0]:016x}", synthetic_trial(next_key[0], args.metrics, rng))  # as a sweep
            next_key[0] += 1
            server_before, client_before = sum(server.cpu_times()[:2]), time.process_time()
            latencies += burst()
            server_cpu += sum(server.cpu_times()[:2]) - server_before
            client_cpu += time.process_time() - client_before
        time.sleep(WARM_WAIT_S)
        cached = burst()
    deciles = statistics.quantiles(latencies, n=10)
    return {
        "cold_results_s": cold, "p50_s": deciles[4], "p90_s": deciles[8], "max_s": max(latencies),
        "server_cpu_s_per_burst": server_cpu / args.rounds, "visitors_cpu_s_per_burst": client_cpu / args.rounds,
        "cached_p50_s": statistics.median(cached),
    }  # fmt: skip


def load_report(store: Path, args: argparse.Namespace) -> dict:
    """Per checkout (this one, and `--before`'s), the median over `repeats` starts of each number;
    the checkouts' starts interleaved so both see the same machine load."""
    codes = {"after": Path(__file__).resolve().parents[1]}
    if args.before:
        codes = {"before": args.before.resolve(), **codes}
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    next_key = [args.trials]
    for _ in range(args.repeats):
        for name, code in codes.items():
            runs[name].append(dashboard_load(store, code, args, next_key))
    return {
        name: {
            **{k: round(statistics.median(r[k] for r in done), 2) for k in done[0]},
            "p50_s_each_start": [round(r["p50_s"], 2) for r in done],
        }
        for name, done in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=50, help="metric rows per trial")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load", action="store_true", help="also time the dashboard under concurrent requests")
    parser.add_argument("--concurrent", type=int, default=20, help="requests at once, half Results, half Charts")
    parser.add_argument("--rounds", type=int, default=3, help="new trial + concurrent requests, per dashboard start")
    parser.add_argument("--before", type=Path, help="a checkout of older code to time the same load against")
    parser.add_argument("--client", choices=["browser", "gradio"], default="browser",
                        help="ask as the page does (browser) or through gradio_client (see above)")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        os.environ["QUANTBENCH_CACHE"] = str(Path(tmp) / "cache")  # the query cache, thrown away after
        fill_store(store, args.trials, args.metrics)
        cold = time_once(store)  # reads every trial file and writes the query cache
        runs = [time_once(store) for _ in range(args.repeats)]
        load = load_report(store, args) if args.load else None
    median = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "versions": {p: version(p) for p in ("duckdb", "pandas", "pyarrow", "plotly")},
        "rows": args.trials * args.metrics,
        "trial_files": args.trials,
        "repeats": args.repeats,
        "first_query_s": round(cold["query_s"], 3),
        "median": median,
        "total_s_all_runs": [round(r["total_s"], 3) for r in runs],
    }
    if load:
        report["dashboard_load"] = {"concurrent": args.concurrent, "rounds_per_start": args.rounds,
                                    "client": args.client, **load}  # fmt: skip
    print(json.dumps(report, indent=2))
    print(
        f"Query + wide pivot + Pareto chart over {report['rows']:,} metric rows in {args.trials:,} trial files: "
        f"{median['total_s']:.2f} s wall, {median['total_cpu_s']:.2f} s CPU (median of {args.repeats}; "
        f"query {median['query_s']:.2f} s, "
        f"pivot {median['wide_s']:.2f} s, chart {median['pareto_chart_s']:.2f} s; the first query, which reads "
        f"every file and fills the query cache, {report['first_query_s']:.1f} s) on {report['machine']}, "
        f"load average {report['load_average_1min']}, {report['date']}."
    )
    for name, numbers in (load or {}).items():
        print(
            f"Dashboard ({name}): {args.concurrent} concurrent Results + Charts requests ({args.client} client) on "
            f"{report['rows']:,} rows, a new trial before each of {args.rounds} rounds: p50 {numbers['p50_s']:.2f} s, "
            f"p90 {numbers['p90_s']:.2f} s, max {numbers['max_s']:.2f} s; cold first Results "
            f"{numbers['cold_results_s']:.2f} s; CPU per burst: server {numbers['server_cpu_s_per_burst']:.2f} s, "
            f"visitors {numbers['visitors_cpu_s_per_burst']:.2f} s; a burst with every view cached: p50 "
            f"{numbers['cached_p50_s']:.2f} s (median of {args.repeats} starts)."
        )


if __name__ == "__main__":
    main()
