"""Planner tab: the form of `quantbench plan`, the memory breakdown as a table and a stacked bar,
and which catalog GPUs it fits (with the largest context and batch for a chosen one); below it,
the planner checked against the memory the store's trials measured (`quantbench plan --calibrate`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from quantbench.app.ui.common import error_box, guarded, read_trials
from quantbench.errors import QuantbenchError
from quantbench.planner.calibrate import LESS_CODE, NOTHING_MEASURED, compare, error_by_method
from quantbench.planner.estimate import ATTENTION, KV_BYTES, MIB, Estimate, Workload, fits
from quantbench.planner.finetune import TARGETS, Lora
from quantbench.planner.formats import DTYPES, plan_methods, weight_format
from quantbench.planner.gpus import CATALOG, GIB
from quantbench.planner.plan import make_plan
from quantbench.planner.presets import PRESETS
from quantbench.planner.weights import parameter_count
from quantbench.trackers import names

ALL_GPUS = ""
METRIC_TITLES = {
    names.WEIGHT_BYTES: "weight bytes",
    names.PEAK_RSS: "peak RSS, whole process",
    LESS_CODE: "peak RSS without library code",
    names.CUDA_MAX_ALLOCATED: "CUDA max allocated",
}


def _method_info() -> str:
    """What a plan of each method prices when bits and group size are left at 0."""
    return "; ".join(f"{name}: {weight_format(name).label}" for name in plan_methods())


def breakdown_frame(est: Estimate) -> pd.DataFrame:
    rows = [(c.name, round(c.bytes / GIB, 3), c.bytes, c.note) for c in est.components]
    rows.append(("total", round(est.total / GIB, 3), est.total, ""))
    return pd.DataFrame(rows, columns=["component", "GiB", "bytes", "note"])


def breakdown_chart(est: Estimate, gpu_gib: int | None = None) -> go.Figure:
    """One stacked bar of the components (GiB), with the chosen GPU's memory as a line."""
    figure = go.Figure(layout={"barmode": "stack", "template": "plotly_white", "title": "Estimated peak memory"})
    for c in est.components:
        figure.add_bar(x=["estimate"], y=[c.bytes / GIB], name=c.name, hovertext=c.note, hoverinfo="text+y")
    if gpu_gib:
        figure.add_hline(y=gpu_gib, line_dash="dash", annotation_text=f"GPU memory {gpu_gib} GiB")
    figure.update_layout(yaxis_title="GiB (2^30 bytes)", height=420)
    return figure


def fits_frame(est: Estimate) -> pd.DataFrame:
    rows = [
        (f.gpu.name, f.gpu.memory_gib, "yes" if f.fits else "no", round(f.headroom / GIB, 2), f.gpu.kind)
        for f in fits(est)
    ]
    return pd.DataFrame(rows, columns=["GPU", "memory GiB", "fits", "GiB free (negative: short)", "kind"])


def calibration_frames(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(error per method and metric, one row per measurement) for a tidy results frame."""
    compared = compare(frame)
    if compared.empty:
        raise QuantbenchError(NOTHING_MEASURED)
    labels = frame.drop_duplicates("trial_key").set_index("trial_key")["method_label"]
    per_method = error_by_method(compared).round({"mean_error_pct": 1, "max_abs_error_pct": 1})
    per_method["metric"] = per_method["metric"].map(METRIC_TITLES)
    per_method.columns = ["method", "metric", "trials", "mean error %", "max |error| %"]
    rows = pd.DataFrame(
        {
            "trial": compared["trial_key"].str[:8],
            "method": compared["trial_key"].map(labels),
            "metric": compared["metric"].map(METRIC_TITLES),
            "seq_len": compared["seq_len"],
            "measured MiB": (compared["measured"] / MIB).round(1),
            "predicted MiB": (compared["predicted"] / MIB).round(1),
            "error %": compared["error_pct"].round(1),
            "note": compared["note"],
        }
    )
    return per_method, rows


def _optional_int(value: float | None, name: str) -> int | None:
    """A whole number from a Number control; None for 0 or empty (the control's 'default')."""
    if not value:
        return None
    if value != int(value):
        raise QuantbenchError(f"{name} must be a whole number, got {value}")
    return int(value)


def build(store: Path) -> dict[str, gr.components.Component]:
    gr.Markdown(
        "Will a model, quantized this way, fit a GPU at this context and batch? Counts every weight "
        "from the model's config (or a bundled preset), the KV cache, prefill activations and runtime "
        "overhead. Memory in GiB (2^30 bytes); a card sold as 24 GB counts as 24 GiB."
    )
    with gr.Row():
        model = gr.Dropdown(
            list(PRESETS),
            value="llama-3.1-8b",
            allow_custom_value=True,
            label="Model",
            info="a bundled preset, or type a model directory, a config.json path, a cached hub id, "
            "or embedded:smollm2-135m",
            elem_id="plan-model",
        )
        method = gr.Dropdown(
            plan_methods(),
            value="gptq",
            label="Method",
            info="its storage format sets the weight bytes; bits and group defaults are listed below",
            elem_id="plan-method",
        )
    with gr.Row():
        bits = gr.Number(
            0, label="Bits", info="bits per weight code; 0 = the method's default", precision=0, elem_id="plan-bits"
        )
        group = gr.Number(0, label="Group size", info="weights per scale; -1 = per row; 0 = default", precision=0)
        dtype = gr.Dropdown(
            list(DTYPES), value="bfloat16", label="Compute dtype", info="of unquantized tensors (default bfloat16)"
        )
    with gr.Row():
        context = gr.Number(4096, label="Context (tokens)", info="per sequence, in the KV cache (default 4096)",
                            precision=0, minimum=1)  # fmt: skip
        batch = gr.Number(1, label="Batch", info="sequences decoded together (default 1)", precision=0, minimum=1)
        kv_dtype = gr.Dropdown(list(KV_BYTES), value="fp16", label="KV cache dtype", info="default fp16")
        prefill_chunk = gr.Number(
            0,
            label="Prefill chunk (tokens)",
            info="tokens per prefill forward, bounds activations; 0 = the whole context",
            precision=0,
            minimum=0,
            elem_id="plan-prefill-chunk",
        )
        attention = gr.Dropdown(
            list(ATTENTION), value="sdpa", label="Attention", info="eager materializes the score matrix (default sdpa)"
        )
    with gr.Row():
        device = gr.Radio(["cuda", "cpu"], value="cuda", label="Runtime", info="which runtime overhead to add")
        gpu = gr.Dropdown(
            [("every GPU in the catalog", ALL_GPUS)] + [(f"{g.name} ({g.memory_gib} GiB)", g.name) for g in CATALOG],
            value=ALL_GPUS,
            label="GPU",
            info="pick one for its largest context and batch",
            elem_id="plan-gpu",
        )
    with gr.Row():
        finetune = gr.Checkbox(
            False,
            label="LoRA fine-tune step",
            info="price one training step on this base instead (QLoRA: method bnb, bits 4); context = sequence length",
            elem_id="plan-finetune",
        )
        lora_rank = gr.Number(Lora.rank, label="LoRA rank", precision=0, minimum=1)
        lora_targets = gr.Textbox(
            ",".join(Lora.targets), label="LoRA targets", info=f"comma-separated, of {', '.join(TARGETS)}"
        )
        grad_checkpointing = gr.Checkbox(False, label="Gradient checkpointing", info="keep block inputs only")
    gr.Markdown(f"<small>Method defaults: {_method_info()}.</small>")
    run = gr.Button("Plan", variant="primary", elem_id="plan-run")
    error = error_box("plan-error")
    summary = gr.Markdown(elem_id="plan-summary")
    # The notes say how each part was counted: the table gets the full width so they are readable.
    table = gr.Dataframe(label="Memory breakdown", interactive=False, wrap=True, elem_id="plan-breakdown")
    with gr.Row():
        chart = gr.Plot(label="Breakdown", elem_id="plan-chart", scale=2)
        fit_table = gr.Dataframe(label="Which GPUs it fits", interactive=False, elem_id="plan-fits", scale=3)

    @guarded(4)
    def plan(
        model_ref: str | None,
        method_name: str,
        bits_v: float | None,
        group_v: float | None,
        dtype_v: str,
        context_v: float | None,
        batch_v: float | None,
        kv_v: str,
        chunk_v: float | None,
        attn_v: str,
        device_v: str,
        gpu_v: str | None,
        finetune_v: bool,
        rank_v: float | None,
        targets_v: str,
        checkpointing_v: bool,
    ) -> tuple:
        if not model_ref or not str(model_ref).strip():
            raise QuantbenchError("choose a model preset or type a model path")
        params = {"compute_dtype": dtype_v}
        for key, value in (("bits", _optional_int(bits_v, "bits")), ("group_size", _optional_int(group_v, "group"))):
            if value is not None:
                params[key] = value
        work = Workload(
            context=_optional_int(context_v, "context") or 0,
            batch=_optional_int(batch_v, "batch") or 0,
            kv_dtype=kv_v,
            prefill_chunk=_optional_int(chunk_v, "prefill chunk"),
            attention=attn_v,
            device=device_v,
        )
        lora = None
        if finetune_v:
            targets = tuple(t.strip() for t in (targets_v or "").split(",") if t.strip())
            lora = Lora(_optional_int(rank_v, "LoRA rank") or 0, targets, bool(checkpointing_v))
        result = make_plan(str(model_ref), method_name, params, work, gpu_v or None, lora)
        est, chosen = result.estimate, result.gpu
        arch, fmt = est.arch, est.fmt
        lines = [
            f"**{arch.name}** ({result.source}): {parameter_count(arch) / 1e9:.3f} B parameters · {arch.summary()}",
            f"**{fmt.label}**, compute dtype {fmt.dtype} · "
            + (
                f"one LoRA training step of batch {work.batch} × {work.context} tokens"
                if lora
                else f"context {work.context} × batch {work.batch}, KV cache {work.kv_dtype}"
            )
            + f" · **total {est.total / GIB:.2f} GiB**",
        ]
        if arch.max_context and work.context > arch.max_context:
            lines.append(f"Warning: context {work.context} exceeds the model's limit of {arch.max_context} tokens.")
        if chosen is not None:
            headroom = result.headroom
            verdict = f"fits, {headroom / GIB:.2f} GiB free" if headroom >= 0 else f"short by {-headroom / GIB:.2f} GiB"
            lines.append(
                f"**{chosen.name}** ({chosen.memory_gib} GiB): {verdict}; largest context at batch {work.batch}: "
                f"{result.largest_context:,} tokens; largest batch at context {work.context}: {result.largest_batch}"
            )
        return (
            "\n\n".join(lines),
            breakdown_frame(est),
            breakdown_chart(est, chosen.memory_gib if chosen else None),
            fits_frame(est),
        )

    inputs = [model, method, bits, group, dtype, context, batch, kv_dtype, prefill_chunk, attention, device, gpu]
    inputs += [finetune, lora_rank, lora_targets, grad_checkpointing]
    run.click(plan, inputs, [summary, table, chart, fit_table, error], api_name="plan")
    _calibration_section(store)
    return {"load": (plan, inputs, [summary, table, chart, fit_table, error])}


def _calibration_section(store: Path) -> None:
    with gr.Accordion("How close is the planner? Check it against the trials in this store", open=False):
        gr.Markdown(
            "Each finished trial's measured memory beside the planner's prediction for the same model, "
            "method and workload: the backend's weight bytes, each perplexity eval's peak process RSS "
            "(CPU) and CUDA allocator peak. **Peak RSS without library code** takes the resident pages "
            "of shared libraries off both sides: how much of libtorch stays resident depends on the "
            "machine's page cache, not on the model. Error % = (predicted − measured) / measured."
        )
        check = gr.Button("Check against the store", elem_id="plan-calibrate")
        error = error_box("plan-calibrate-error")
        per_method = gr.Dataframe(label="Error per method", interactive=False, elem_id="plan-calibration")
        rows = gr.Dataframe(label="Each measurement", interactive=False, wrap=True, elem_id="plan-calibration-rows")

    @guarded(2)
    def calibrate() -> tuple:
        frame, _ = read_trials(store)
        if frame.empty:
            raise QuantbenchError(f"no results in {store}: run trials first")
        return calibration_frames(frame)

    check.click(calibrate, None, [per_method, rows, error], api_name="calibrate")
