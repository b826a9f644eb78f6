"""Run tab: model, queued methods and the chosen evals, each with a form generated from its
Params model (the controls, their defaults and help come from the fields, never restated here),
device; Start runs the trials in the background and a timer polls their progress; Cancel stops
the running worker."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import gradio as gr
from pydantic.fields import FieldInfo

from quantbench.app.inputs import DEFAULT_EVALS, as_text, default_help, eval_specs, unwrap_optional
from quantbench.app.ui.common import error_box, guarded, no_error, show_error
from quantbench.app.ui.run_session import RunSession
from quantbench.backends.registry import backend_names, get_backend, method_facts, method_label
from quantbench.errors import QuantbenchError
from quantbench.evals.registry import EVALS, get_eval
from quantbench.runner.envs import environment_line, runs_here
from quantbench.spec import DEFAULT_MODEL, EvalSpec, MethodSpec, ModelRef, validate_params


def eval_label(name: str) -> str:
    """The checkbox text of an eval: its name and the first line of its Params docstring."""
    doc = (get_eval(name).Params.__doc__ or "").strip()
    return f"{name}: {doc.splitlines()[0]}" if doc else name


def _literal_choices(annotation: object) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


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


def param_control(
    method: str, name: str, info: FieldInfo, kind: str = "param", shown: Callable[[Any], Any] = shown_default
) -> gr.components.Component:
    """The control for one parameter of an adapter (`kind` "param") or of an eval ("eval"): a
    dropdown for a Literal, a checkbox for a bool, a number for an int or float, a text box
    otherwise, holding the field's default as `shown` writes it."""
    default = shown(info.get_default(call_default_factory=True))
    common = {"label": name, "info": default_help(info, shown), "elem_id": f"{kind}-{method}-{name}"}
    annotation = unwrap_optional(info.annotation)
    choices = _literal_choices(annotation)
    if choices:
        return gr.Dropdown(list(choices), value=default, **common)
    if annotation is bool:
        return gr.Checkbox(value=default, **common)
    # An empty Number comes back from the browser as 0, so a field whose default is None ("unset")
    # takes its number as text: empty stays unset and pydantic reads the digits.
    if annotation in (int, float) and default is not None:
        precision = 0 if annotation is int else None
        return gr.Number(value=default, precision=precision, **_bounds(info, annotation is int), **common)
    return gr.Textbox(value="" if default is None else str(default), **common)


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


def eval_control(name: str, field: str, info: FieldInfo) -> gr.components.Component:
    """An eval parameter's control: collections are comma lists, as on the command line."""
    return param_control(name, field, info, kind="eval", shown=as_text)


def devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _availability_line(name: str, device_list: list[str]) -> str:
    backend = get_backend(name)
    version = backend.library_version()
    library = f"{backend.library} {version or '(not installed)'}" if backend.library else "built in"
    parts = []
    for device in device_list if runs_here(backend) else ():  # elsewhere its environment checks the devices
        check = backend.check(device)
        parts.append(f"✓ runs on {device}" + (f" ({check.reason})" if check.reason else "") if check.ok
                     else f"✗ not on {device}: {check.reason}")  # fmt: skip
    if backend.environment is not None:
        parts.append(environment_line(backend))
    return f"**{name}** · {library} · " + " · ".join(parts) + f" · {method_facts(backend)}"


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

    gr.Markdown("### Evals and their parameters")
    evals = gr.CheckboxGroup(
        [(eval_label(name), name) for name in EVALS],
        value=list(DEFAULT_EVALS),
        label="Evals",
        info="what to measure for every queued method; each chosen eval shows its parameters below",
        elem_id="run-evals",
    )
    eval_forms: dict[str, tuple[gr.Group, dict[str, gr.components.Component]]] = {}
    for name in EVALS:
        with gr.Group(visible=name in DEFAULT_EVALS) as group:
            gr.Markdown(f"**{name}**")
            with gr.Row():
                fields = get_eval(name).Params.model_fields
                controls = {field: eval_control(name, field, info) for field, info in fields.items()}
        eval_forms[name] = (group, controls)

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

    @guarded(2)
    def add_method(values: dict) -> tuple:
        name, items = values[method], values[queue]
        fields = get_backend(name).Params.model_fields
        params = changed_params(fields, [values[c] for c in forms[name][1]])
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
    def start_run(values: dict) -> tuple:
        from quantbench.runner.trial import plan_trial

        items, chosen = values[queue], values[evals]
        if not items:
            raise QuantbenchError("the queue is empty: choose a method and press Add to queue")
        if not (values[model] or "").strip():
            raise QuantbenchError("enter a model: embedded:smollm2-135m, a path or a hub id")
        if not chosen:
            raise QuantbenchError("choose at least one eval")
        typed = {name: {field: values[c] for field, c in eval_forms[name][1].items()} for name in chosen}
        specs_of_evals = eval_specs([EvalSpec(name) for name in chosen], typed)
        ref = ModelRef(values[model].strip(), trust_remote_code=bool(values[trust]))
        specs = [plan_trial(ref, MethodSpec.parse(label), specs_of_evals, values[device]) for label in items]
        timeout_s = float(values[timeout]) if values[timeout] else None
        session.start(specs, force=bool(values[force]), timeout_s=timeout_s)
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

    def show_eval_forms(chosen: list[str]) -> list:
        return [gr.update(visible=name in chosen) for name in eval_forms]

    # Handlers take their inputs as one {component: value} dict (gradio passes a set of inputs so).
    method_controls = {c for _, controls in forms.values() for c in controls}
    eval_controls = {c for _, controls in eval_forms.values() for c in controls.values()}
    evals.change(show_eval_forms, evals, [group for group, _ in eval_forms.values()], api_name=False)
    method.change(show_form, method, [group for group, _ in forms.values()], api_name=False)
    add.click(add_method, {method, queue, *method_controls}, [queue, queue_md, method_error], api_name=False)
    remove.click(remove_last, queue, [queue, queue_md], api_name=False)
    clear.click(lambda: ([], queue_text([])), None, [queue, queue_md], api_name=False)
    run_inputs = {queue, model, trust, evals, device, force, timeout, *eval_controls}
    start.click(start_run, run_inputs, [status, progress, timer, start, error], api_name=False)
    timer.tick(poll, None, [status, progress, error, timer, start], api_name=False)
    cancel.click(cancel_run, None, [error], api_name=False)
    return {"load": (poll, None, [status, progress, error, timer, start])}
