"""Run tab: model, queued methods (each with a form generated from its adapter's Params model),
evals and their budgets, device; Start runs the trials in the background and a timer polls their
progress; Cancel stops the running worker."""

from __future__ import annotations

import types
import typing
from typing import Any

import gradio as gr
from pydantic.fields import FieldInfo

from quantbench.app.ui.common import error_box, guarded, no_error, show_error
from quantbench.app.ui.run_session import RunSession
from quantbench.backends.registry import backend_names, get_backend, method_label
from quantbench.errors import QuantbenchError
from quantbench.evals.latency import LatencyParams
from quantbench.evals.perplexity import PerplexityParams
from quantbench.evals.registry import EVALS, get_eval
from quantbench.spec import DEFAULT_MODEL, EvalSpec, MethodSpec, ModelRef, validate_params

EVAL_HELP = {
    "perplexity": "perplexity: quality on a text corpus (lower is better)",
    "divergence": "divergence: KL divergence from the unquantized model, token by token",
    "latency": "latency: prefill time and decode tokens/s",
    "tasks": "tasks: lm-evaluation-harness accuracy (needs the task data offline)",
    "memory": "memory: checkpoint bytes on disk, for methods that save",
}


def eval_label(name: str) -> str:
    """The checkbox text of an eval: ours above, else the first line of its module's docstring."""
    if name in EVAL_HELP:
        return EVAL_HELP[name]
    doc = (get_eval(name).__doc__ or "").strip()
    return f"{name}: {doc.splitlines()[0]}" if doc else name


PPL = PerplexityParams()
LATENCY = LatencyParams()
# The budget of the default benchmark (examples/sweep-cpu.yaml, what `make run` stores), so trials
# started here compare with its results; the eval's own defaults (seq_len 2048, the whole corpus)
# take minutes per trial on a CPU.
UI_SEQ_LEN, UI_MAX_TOKENS = 512, 4096


def _literal_choices(annotation: object) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def _optional(annotation: object) -> object:
    """`int | None` -> int."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


# pydantic constraint -> Number bound; gt/lt become inclusive bounds for the integer controls.
BOUNDS = (("ge", "minimum", 0), ("gt", "minimum", 1), ("le", "maximum", 0), ("lt", "maximum", -1))


def _bounds(info: FieldInfo, integer: bool) -> dict[str, float]:
    bounds = {}
    for item in info.metadata:
        for attr, key, shift in BOUNDS:
            if getattr(item, attr, None) is not None:
                bounds[key] = getattr(item, attr) + (shift if integer else 0)
    return bounds


def shown_default(value: Any) -> Any:
    """A default as its control holds it: tuples of module names are joined with '+'."""
    return "+".join(value) if isinstance(value, tuple) else value


def param_control(method: str, name: str, info: FieldInfo) -> gr.components.Component:
    """The control for one adapter parameter: a dropdown for a Literal, a checkbox for a bool,
    a number for an int or float, a text box otherwise."""
    default = shown_default(info.default)
    help_text = f"{info.description or name} (default: {default})"
    common = {"label": name, "info": help_text, "elem_id": f"param-{method}-{name}"}
    annotation = _optional(info.annotation)
    choices = _literal_choices(annotation)
    if choices:
        return gr.Dropdown(list(choices), value=default, **common)
    if annotation is bool:
        return gr.Checkbox(value=default, **common)
    if annotation in (int, float):
        precision = 0 if annotation is int else None
        return gr.Number(value=default, precision=precision, **_bounds(info, annotation is int), **common)
    return gr.Textbox(value=str(default), **common)


def changed_params(fields: dict[str, FieldInfo], values: list[Any]) -> dict[str, Any]:
    """Only the parameters whose value differs from the default: the label stays short and the
    trial key equals that of the same method typed on the command line."""
    changed = {}
    for (name, info), value in zip(fields.items(), values, strict=True):
        if value is None or value == "":
            continue
        if value != shown_default(info.default):
            changed[name] = value
    return changed


def int_list(text: str, name: str) -> list[int] | None:
    """A comma list of integers typed in a text box ("128,512"); None when empty."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise QuantbenchError(f"{name}: expected comma-separated whole numbers, got {text!r}") from None


def eval_specs(names: list[str], budget: dict[str, Any]) -> list[EvalSpec]:
    """Each chosen eval with the budget values named like its Params fields (as `quantbench run` does)."""
    specs = []
    for name in names:
        fields = get_eval(name).Params.model_fields
        specs.append(EvalSpec(name, {k: v for k, v in budget.items() if k in fields and v not in (None, "", [])}))
    return specs


def devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _availability_line(name: str, device_list: list[str]) -> str:
    backend = get_backend(name)
    version = backend.library_version()
    library = f"{backend.library} {version or '(not installed)'}" if backend.library else "built in"
    parts = []
    for device in device_list:
        check = backend.check(device)
        parts.append(f"✓ runs on {device}" + (f" ({check.reason})" if check.reason else "") if check.ok
                     else f"✗ not on {device}: {check.reason}")  # fmt: skip
    return f"**{name}** · {library} · " + " · ".join(parts)


def queue_text(queue: list[str]) -> str:
    if not queue:
        return "_The queue is empty: choose a method above and press **Add to queue**._"
    return "**Queued methods** (one trial each):\n\n" + "\n".join(f"{i}. `{m}`" for i, m in enumerate(queue, 1))


def build(session: RunSession) -> dict[str, Any]:
    device_list = devices()
    names = list(backend_names())
    gr.Markdown(
        "Quantize a model with each queued method and measure it. Each trial runs in its own worker "
        "process; results land in the store and appear in the other tabs. A trial already in the "
        "store is skipped unless you tick **Re-run**."
    )
    with gr.Row():
        model = gr.Textbox(
            DEFAULT_MODEL,
            label="Model",
            info=f"{DEFAULT_MODEL} = SmolLM2-135M shipped with quantbench (no download); or a .gguf file, a "
            "directory with config.json + safetensors, or a Hugging Face id (org/name)",
            elem_id="run-model",
            scale=3,
        )
        trust = gr.Checkbox(False, label="Trust remote code", info="let the model's own Python code run (off)")

    gr.Markdown("### Methods")
    method = gr.Dropdown(
        names,
        value="baseline",
        label="Method",
        info="pick one, set its parameters, then Add to queue; repeat for more",
        elem_id="run-method",
    )
    forms: dict[str, tuple[gr.Group, list[gr.components.Component]]] = {}
    for name in names:
        fields = get_backend(name).Params.model_fields
        with gr.Group(visible=name == "baseline") as group:
            gr.Markdown(_availability_line(name, device_list))
            with gr.Row():
                controls = [param_control(name, field, info) for field, info in fields.items()]
        forms[name] = (group, controls)
    with gr.Row():
        add = gr.Button("Add to queue", elem_id="run-add")
        remove = gr.Button("Remove last", elem_id="run-remove")
        clear = gr.Button("Clear queue", elem_id="run-clear")
    method_error = error_box("run-method-error")  # beside the form it is about
    queue = gr.State(["baseline"])
    queue_md = gr.Markdown(queue_text(["baseline"]), elem_id="run-queue")

    gr.Markdown("### Evals and their budgets")
    evals = gr.CheckboxGroup(
        [(eval_label(name), name) for name in EVALS],
        value=["perplexity"],
        label="Evals",
        info="what to measure for every queued method",
        elem_id="run-evals",
    )
    with gr.Row():
        corpus = gr.Textbox(
            PPL.corpus,
            label="Corpus (perplexity, divergence)",
            info="builtin = CPython's help texts (offline); wikitext2; or a .txt/.jsonl/.parquet file",
            elem_id="run-corpus",
        )
        seq_len = gr.Number(
            UI_SEQ_LEN,
            label="Window length (tokens)",
            info=f"seq_len: tokens per scored window (eval default {PPL.seq_len}; {UI_SEQ_LEN} as in make run)",
            precision=0,
            minimum=2,
            elem_id="run-seq-len",
        )
        max_tokens = gr.Number(
            UI_MAX_TOKENS,
            label="Token budget",
            info=f"max_tokens: score only the first N corpus tokens; 0 = the whole corpus ({UI_MAX_TOKENS} as in "
            "make run)",
            precision=0,
            minimum=0,
            elem_id="run-max-tokens",
        )
    with gr.Row(visible=False) as latency_row:
        prompt_lengths = gr.Textbox(
            ",".join(map(str, LATENCY.prompt_lengths)),
            label="Latency: prompt lengths (tokens)",
            info="prefill is timed at each length, comma-separated",
        )
        batch_sizes = gr.Textbox(
            ",".join(map(str, LATENCY.batch_sizes)),
            label="Latency: decode batch sizes",
            info="decode tokens/s is timed at each batch size",
        )
        new_tokens = gr.Number(
            LATENCY.new_tokens, label="Latency: new tokens", info="tokens generated per row", precision=0, minimum=2
        )
    with gr.Row(visible=False) as tasks_row:
        tasks = gr.Textbox("lambada_openai", label="Tasks: lm-eval task names", info="comma-separated")
        task_data = gr.Textbox(label="Tasks: local data", info="TASK=FILE, comma-separated (needed offline)")
        limit = gr.Number(0, label="Tasks: documents per task", info="0 = all", precision=0, minimum=0)

    gr.Markdown("### Where and how")
    with gr.Row():
        device = gr.Radio(
            device_list,
            value="cpu",
            label="Device",
            info="only the devices present here" + ("" if "cuda" in device_list else " (no CUDA GPU visible)"),
            elem_id="run-device",
        )
        force = gr.Checkbox(False, label="Re-run", info="run trials already in the store again")
        timeout = gr.Number(
            0, label="Timeout per trial (s)", info="kill a trial's worker after this; 0 = no limit", minimum=0
        )
    with gr.Row():
        start = gr.Button("Start run", variant="primary", elem_id="run-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="run-cancel")
    error = error_box("run-error")
    status = gr.Markdown(session.snapshot()[0], elem_id="run-status")
    progress = gr.Dataframe(
        label="Trials of this run",
        interactive=False,
        wrap=True,
        elem_id="run-progress",
    )
    timer = gr.Timer(1.0, active=False)

    def show_form(name: str) -> list:
        return [gr.update(visible=n == name) for n in names]

    all_controls = [c for _, controls in forms.values() for c in controls]

    @guarded(2)
    def add_method(name: str, items: list[str], *values: Any) -> tuple:
        offset = sum(len(forms[n][1]) for n in names[: names.index(name)])
        fields = get_backend(name).Params.model_fields
        params = changed_params(fields, list(values[offset : offset + len(fields)]))
        validate_params(get_backend(name).Params, params, f"method {name!r}")
        label = method_label(MethodSpec(name, params))
        if label in items:
            raise QuantbenchError(f"{label} is already in the queue")
        items = [*items, label]
        return items, queue_text(items)

    def remove_last(items: list[str]) -> tuple:
        items = items[:-1]
        return items, queue_text(items)

    @guarded(4)
    def start_run(items: list[str], *values: Any) -> tuple:
        from quantbench.runner.trial import plan_trial

        (model_v, trust_v, evals_v, corpus_v, seq_len_v, max_tokens_v, prompt_v, batch_v, new_v, tasks_v,
         task_data_v, limit_v, device_v, force_v, timeout_v) = values  # fmt: skip
        if not items:
            raise QuantbenchError("the queue is empty: choose a method and press Add to queue")
        if not (model_v or "").strip():
            raise QuantbenchError("enter a model: embedded:smollm2-135m, a path or a hub id")
        if not evals_v:
            raise QuantbenchError("choose at least one eval")
        budget = {
            "corpus": (corpus_v or "").strip(),
            "seq_len": seq_len_v,
            "max_tokens": max_tokens_v or None,  # 0 = the whole corpus
            "prompt_lengths": int_list(prompt_v, "latency prompt lengths"),
            "batch_sizes": int_list(batch_v, "latency batch sizes"),
            "new_tokens": new_v,
            "tasks": tasks_v,
            "task_data": [p.strip() for p in (task_data_v or "").split(",") if p.strip()],
            "limit": limit_v or None,
        }
        ref = ModelRef(model_v.strip(), trust_remote_code=bool(trust_v))
        specs = [plan_trial(ref, MethodSpec.parse(label), eval_specs(evals_v, budget), device_v) for label in items]
        session.start(specs, force=bool(force_v), timeout_s=float(timeout_v) if timeout_v else None)
        line, table, _ = session.snapshot()
        return line, table, gr.Timer(active=True), gr.update(interactive=False)

    def poll() -> tuple:
        line, table, run_error = session.snapshot()
        running = session.running
        return (
            line,
            table,
            show_error(run_error) if run_error else no_error(),
            gr.Timer(active=running),
            gr.update(interactive=not running),
        )

    def cancel_run() -> tuple:
        if not session.cancel():
            return (show_error("nothing is running"),)
        return (no_error(),)

    def show_budgets(chosen: list[str]) -> tuple:
        return gr.update(visible="latency" in chosen), gr.update(visible="tasks" in chosen)

    evals.change(show_budgets, evals, [latency_row, tasks_row], api_name=False)
    method.change(show_form, method, [group for group, _ in forms.values()], api_name=False)
    add.click(add_method, [method, queue, *all_controls], [queue, queue_md, method_error], api_name=False)
    remove.click(remove_last, queue, [queue, queue_md], api_name=False)
    clear.click(lambda: ([], queue_text([])), None, [queue, queue_md], api_name=False)
    run_inputs = [model, trust, evals, corpus, seq_len, max_tokens, prompt_lengths, batch_sizes, new_tokens, tasks,
                  task_data, limit, device, force, timeout]  # fmt: skip
    start.click(start_run, [queue, *run_inputs], [status, progress, timer, start, error], api_name=False)
    timer.tick(poll, None, [status, progress, error, timer, start], api_name=False)
    cancel.click(cancel_run, None, [error], api_name=False)
    return {"load": (poll, None, [status, progress, error, timer, start])}
