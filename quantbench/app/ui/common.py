"""What every tab shares: the error box, reading the store, trial choices and the filter controls.

Handlers never let an exception reach Gradio (which would show a bare "Error" toast, or a
traceback with `show_error`): `guarded` turns QuantbenchError into its one-line message in the
tab's error box, and anything else, a bug, into a short message while the traceback goes to the
server log.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from pydantic import ValidationError

from quantbench.errors import QuantbenchError
from quantbench.results.index import store_view
from quantbench.results.query import Filters, select, wide
from quantbench.results.store import StoreContents

log = logging.getLogger("quantbench.ui")

ANY = "any"


def error_box(elem_id: str) -> gr.Markdown:
    """An initially hidden red box for one tab's error message."""
    return gr.Markdown("", visible=False, elem_id=elem_id, elem_classes=["qb-error"])


def show_error(message: str) -> dict[str, Any]:
    return gr.update(value=f"**Error:** {html.escape(message)}", visible=True)


def no_error() -> dict[str, Any]:
    return gr.update(value="", visible=False)


def describe(exc: Exception) -> str:
    """The one line a user sees for an exception raised by a handler."""
    if isinstance(exc, QuantbenchError):
        return str(exc)
    if isinstance(exc, ValidationError):
        # What spec.validate_params says for the same problem: "field: message; ...".
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
    return f"unexpected {type(exc).__name__}: {exc} (a bug in quantbench; the traceback is in the server log)"


def guarded(n_outputs: int) -> Callable[[Callable[..., tuple]], Callable[..., tuple]]:
    """Wrap a handler whose last output is the tab's error box: on success the box is hidden; on
    an error every other output is left unchanged and the box shows the message."""

    def wrap(handler: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(handler)
        def run(*args: Any) -> tuple:
            try:
                return (*handler(*args), no_error())
            except Exception as exc:
                if not isinstance(exc, QuantbenchError | ValidationError):
                    log.exception("UI handler %s failed", handler.__name__)
                return (*(gr.update() for _ in range(n_outputs)), show_error(describe(exc)))

        return run

    return wrap


def read_trials(store: Path, filters: Filters | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy rows, wide table) of the store's trials that match `filters`, kept by the store's index
    until the store changes (treat them as read-only); unreadable files are logged."""
    filters = filters or Filters()

    def trials(contents: StoreContents) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        frame = select(contents.frame, filters)
        return frame, wide(frame), contents.skipped

    frame, table, skipped = store_view(store, ("trials", filters), trials)
    for problem in skipped:
        log.warning("skipped %s", problem)
    return frame, table


def trial_label(row: pd.Series) -> str:
    """How a trial is named in pickers: short key, method, model, status."""
    return f"{row['trial_key'][:8]} · {row['method_label']} · {row['model_ref']} · {row['status']}"


def trial_choices(table: pd.DataFrame) -> list[tuple[str, str]]:
    return [(trial_label(row), row["trial_key"]) for _, row in table.iterrows()]


def method_choices(table: pd.DataFrame) -> list[str]:
    """`any`, then each method name, then each full label present in the store."""
    if table.empty:
        return [ANY]
    names = sorted(set(table["method"].dropna()))
    labels = sorted(set(table["method_label"].dropna()) - set(names))
    return [ANY, *names, *labels]


def method_updates(store: Path, count: int) -> list[dict[str, Any]]:
    """New choices for `count` method filters, from the trials now in the store."""
    choices = method_choices(read_trials(store)[1])
    return [gr.update(choices=choices) for _ in range(count)]


def make_filters(method: str | None, status: str | None) -> Filters:
    return Filters(
        method=None if method in (None, "", ANY) else method,
        status=None if status in (None, "", ANY) else status,
    )


def model_contains(table: pd.DataFrame, text: str | None) -> pd.DataFrame:
    """Trials whose model reference contains `text` (case-insensitive); all when it is blank."""
    text = (text or "").strip().lower()
    if not text or table.empty:
        return table
    return table[table["model_ref"].astype(str).str.lower().str.contains(text, regex=False)]


def filter_controls(prefix: str, with_status: bool = True) -> tuple[gr.Dropdown, gr.Radio | None, gr.Textbox]:
    """Method, status (unless `with_status` is False) and model filters, laid out in one row."""
    with gr.Row():
        method = gr.Dropdown(
            [ANY],
            value=ANY,
            label="Method",
            info="a method name (every setting of it) or one exact label; 'any' shows all",
            allow_custom_value=True,
            elem_id=f"{prefix}-method",
        )
        status = None
        if with_status:
            status = gr.Radio(
                [ANY, "ok", "failed"],
                value=ANY,
                label="Status",
                info="failed trials are stored with their error text",
                elem_id=f"{prefix}-status",
            )
        model = gr.Textbox(
            label="Model contains",
            info="part of the model reference, e.g. smollm2; empty = every model",
            elem_id=f"{prefix}-model",
        )
    return method, status, model
