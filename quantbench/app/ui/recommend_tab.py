"""Recommend tab, the dashboard's first: the form of `quantbench recommend` (model, a catalog GPU or a
memory size, workload, quality bounds), the ranked and excluded settings, the quality-vs-memory chart
with the budget drawn on it, and a button that queues exactly the unmeasured settings' trials through
the Run tab's session (their sweep file is offered for download too)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from quantbench.app.inputs import optional_number
from quantbench.app.ui.common import error_box, guarded, read_trials
from quantbench.app.ui.run_session import RunSession
from quantbench.backends.registry import method_label
from quantbench.errors import QuantbenchError
from quantbench.planner.estimate import KV_BYTES
from quantbench.planner.gpus import CATALOG
from quantbench.results.recommend import Bounds, Request, recommend, sweep_yaml
from quantbench.results.recommend_view import (
    RANKING,
    budget_chart,
    excluded_table,
    ranked_table,
    summary,
    unmeasured_table,
)

MEMORY_SIZE = ""  # the GPU choice that means "use the memory size typed beside it"
BOUNDS = (
    ("max_kld", "Max mean KLD (nats)", "vs the unquantized model, divergence eval; e.g. 0.05", "0.05"),
    ("min_top1", "Min top-1 agreement (%)", "same top token as the unquantized model; e.g. 90", ""),
    ("max_ppl_increase_pct", "Max perplexity increase (%)", "over the baseline trial; e.g. 5", ""),
    ("max_task_drop_points", "Max task-accuracy drop (points)", "of every task the baseline measured", ""),
    ("min_decode_tps", "Min decode tokens/s", "at this batch, as measured on the store's machine", ""),
)


def model_choices(store: Path) -> dict[str, Any]:
    """The models of the store's trials, the newest first, as dropdown choices."""
    _, table = read_trials(store)
    refs = list(dict.fromkeys(table.sort_values("created_at", ascending=False)["model_ref"])) if len(table) else []
    return gr.update(choices=refs, value=refs[0] if refs else None)


def queue_sweep(session: RunSession, sweep_path: str | None) -> str:
    """Start the trials of a recommendation's sweep file in the Run tab's session; what to tell the user."""
    from quantbench.runner.sweep import load_sweep

    if not sweep_path:
        raise QuantbenchError("nothing to queue: press Recommend first (every setting that fits may be measured)")
    sweep, specs = load_sweep(Path(sweep_path))
    session.start(specs, timeout_s=sweep.timeout_s)
    methods = ", ".join(f"`{method_label(spec.method)}`" for spec in specs)
    return f"Started {len(specs)} trial{'s' if len(specs) > 1 else ''} ({methods}): follow them in **Run**."


def build(store: Path, session: RunSession, export_dir: Path) -> dict[str, Any]:
    """The tab; sweep files are written under `export_dir`, which the app serves downloads from."""
    gr.Markdown(
        "**Which setting keeps the model good enough and fits my memory?** Measured quality and speed from "
        f"the store × the planner's memory at your context and batch. Ranking: {RANKING}. A bound met only "
        "within noise (the distance to it is not significant at 95%) is flagged. Settings that fit but have "
        "no trial yet can be queued in one click."
    )
    with gr.Row():
        model = gr.Dropdown([], label="Model", info="a model of the store's trials", allow_custom_value=True,
                            elem_id="rec-model")  # fmt: skip
        gpu = gr.Dropdown(
            [("memory size (type it →)", MEMORY_SIZE)] + [(f"{g.name} ({g.memory_gib} GiB)", g.name) for g in CATALOG],
            value="RTX 4090",
            label="Target GPU",
            info="a catalog GPU, or a memory size (e.g. the RAM for CPU)",
            allow_custom_value=True,  # a typed name is looked up as `--gpu` does, ignoring case and spaces
            elem_id="rec-gpu",
        )
        memory = gr.Textbox("", label="Memory size (GiB)", info="used when the target is a memory size",
                            elem_id="rec-memory")  # fmt: skip
        device = gr.Radio(["auto", "cuda", "cpu"], value="auto", label="Runtime",
                          info="auto: cuda for a GPU, cpu for a memory size")  # fmt: skip
    with gr.Row():
        context = gr.Number(4096, label="Context (tokens)", precision=0, minimum=1, elem_id="rec-context")
        batch = gr.Number(1, label="Batch", precision=0, minimum=1, elem_id="rec-batch")
        kv_dtype = gr.Dropdown(list(KV_BYTES), value="fp16", label="KV cache dtype")
    with gr.Row():
        bounds = [gr.Textbox(default, label=label, info=info, elem_id=f"rec-{field}")
                  for field, label, info, default in BOUNDS]  # fmt: skip
    run = gr.Button("Recommend", variant="primary", elem_id="rec-run")
    error = error_box("rec-error")
    headline = gr.Markdown(elem_id="rec-summary")
    ranked = gr.Dataframe(label="Ranked: meet every bound and fit", interactive=False, wrap=True, elem_id="rec-ranked")
    chart = gr.Plot(label="Quality vs memory, with the budget", elem_id="rec-chart")
    excluded = gr.Dataframe(label="Excluded, and the bound each broke", interactive=False, wrap=True,
                            elem_id="rec-excluded")  # fmt: skip
    unmeasured = gr.Dataframe(label="Fit the budget, not measured yet", interactive=False, elem_id="rec-unmeasured")
    with gr.Row():
        queue = gr.Button("Queue the unmeasured trials", elem_id="rec-queue")
        sweep_file = gr.File(label="Their sweep file", interactive=False, elem_id="rec-sweep")
    queued = gr.Markdown(elem_id="rec-queued")
    sweep_state = gr.State(None)

    @guarded(7)
    def answer(model_ref, gpu_v, memory_v, device_v, context_v, batch_v, kv_v, *bound_texts) -> tuple:
        if not model_ref:
            raise QuantbenchError("choose a model: the store has no trials yet, run some in the Run tab")
        given = {field: optional_number(text, label) for (field, label, _, _), text in zip(BOUNDS, bound_texts,
                                                                                           strict=True)}  # fmt: skip
        request = Request(
            model=str(model_ref),
            bounds=Bounds(**given),
            gpu=gpu_v or None,
            memory_gib=None if gpu_v else optional_number(memory_v, "Memory size"),
            device=None if device_v == "auto" else device_v,
            context=int(context_v or 0),
            batch=int(batch_v or 0),
            kv_dtype=kv_v,
        )
        request.bounds.validate()
        request.budget()
        frame, _ = read_trials(store)
        rec = recommend(frame, request)
        sweep_path = None
        if rec.sweep is not None:
            sweep_path = Path(tempfile.mkdtemp(prefix="sweep-", dir=export_dir)) / "unmeasured.yaml"
            sweep_path.write_text(sweep_yaml(rec.sweep))
        return (
            summary(rec),
            ranked_table(rec),
            budget_chart(rec, frame),
            excluded_table(rec),
            unmeasured_table(rec),
            str(sweep_path) if sweep_path else None,
            str(sweep_path) if sweep_path else None,
        )

    @guarded(1)
    def queue_unmeasured(sweep_path: str | None) -> tuple:
        return (queue_sweep(session, sweep_path),)

    inputs = [model, gpu, memory, device, context, batch, kv_dtype, *bounds]
    outputs = [headline, ranked, chart, excluded, unmeasured, sweep_file, sweep_state, error]
    run.click(answer, inputs, outputs, api_name="recommend")
    started = queue.click(queue_unmeasured, sweep_state, [queued, error], api_name=False)
    return {"models": (lambda: model_choices(store), None, model), "queued": started}
