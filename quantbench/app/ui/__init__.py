"""The browser dashboard (`quantbench ui`): tabs Recommend, Run, Results, Compare, Charts, Planner, Export.

It listens on 127.0.0.1 unless told otherwise (`--public`), sends no analytics, makes no share
link and loads nothing from the internet (system fonts, no CDN), so it works offline.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
from pathlib import Path

# Before gradio is imported: it reads this once, and would otherwise phone home on launch.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from quantbench.app.ui import (
    charts_tab,
    compare_tab,
    export_tab,
    planner_tab,
    recommend_tab,
    results_tab,
    run_tab,
    sensitivity_tab,
)
from quantbench.app.ui.common import ANY, method_updates
from quantbench.app.ui.run_session import RunSession
from quantbench.app.ui.warm import keep_warm
from quantbench.errors import QuantbenchError
from quantbench.results.charts import DEFAULT_CONTEXT

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# System fonts only: the default theme's fonts are bundled, but a GoogleFont anywhere would make
# the page wait on fonts.googleapis.com, which an offline machine never answers.
THEME = gr.themes.Default(
    font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)
CSS = """
.qb-error { border: 2px solid #c62828; background: #fdecea; color: #8e0000; border-radius: 6px; padding: 8px 12px; }
.qb-error .qb-error { border: none; padding: 0; }  /* gradio puts elem_classes on the block and its text */
.qb-better { background: #dcf5e3; color: #0b5d1e; }
.qb-worse { background: #fde2e1; color: #8e0000; }
table.qb-compare { border-collapse: collapse; font-size: 14px; }
table.qb-compare th, table.qb-compare td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.qb-compare th:first-child { text-align: left; }
"""


def build_app(store: Path, export_dir: Path | None = None) -> gr.Blocks:
    """The dashboard over the results store `store`; exports are written under `export_dir`
    (default: a fresh temporary directory)."""
    store = Path(store).expanduser()
    export_dir = Path(export_dir or tempfile.mkdtemp(prefix="quantbench-export-"))
    session = RunSession(store)
    loads = []
    with gr.Blocks(title="quantbench", analytics_enabled=False) as app:
        gr.Markdown(
            "# quantbench\nWhich quantization method, at which bit width, keeps a language model good enough "
            "while making it small and fast enough? **Recommend** answers it for your memory and quality bounds; "
            "start trials in **Run**; read them in **Results**, **Compare** and **Charts**; size a deployment in "
            "**Planner**; download tables in **Export**."
        )
        with gr.Tabs():
            with gr.Tab("Recommend", id="recommend"):
                recommend_parts = recommend_tab.build(store, session, export_dir)
            with gr.Tab("Run", id="run"):
                run_poll = run_tab.build(session)["load"]
            with gr.Tab("Results", id="results") as results:
                shown = results_tab.build(store)
            with gr.Tab("Compare", id="compare") as compare:
                choices = compare_tab.build(store)["load"]
            with gr.Tab("Charts", id="charts") as charts:
                charts_parts = charts_tab.build(store)
            with gr.Tab("Planner", id="planner"):
                loads.append(planner_tab.build(store)["load"])
            with gr.Tab("Sensitivity", id="sensitivity"):
                loads.append(sensitivity_tab.build(store)["load"])
            with gr.Tab("Export", id="export") as exports:
                export_parts = export_tab.build(store, export_dir)
        chart = charts_parts["load"]
        loads += [run_poll, recommend_parts["models"]]
        # Trials queued from Recommend run in the Run tab's session: start its progress polling.
        recommend_parts["queued"].then(*run_poll, api_name=False)
        filters = [charts_parts["method"], export_parts["method"]]
        # Tabs over the store read it again when opened: a run may have finished meanwhile.
        results.select(shown["handler"], shown["inputs"], shown["outputs"], api_name=False, **shown["listen"])
        compare.select(*choices, api_name=False)
        charts.select(chart[0], chart[1], chart[2], api_name=False)
        for tab in (charts, exports):
            tab.select(lambda: method_updates(store, len(filters)), None, filters, api_name=False)
        for handler, inputs, outputs in loads:
            app.load(handler, inputs, outputs, api_name=False)
        app.load(shown["handler"], shown["inputs"], shown["outputs"], api_name=False, **shown["listen"])
        app.load(*choices, api_name=False)
    app.export_dir = export_dir  # where launch() must allow downloads from
    # What a visitor sees first, which serve() keeps computed as trials arrive (the handlers'
    # guards turn any failure into their error box, so these never raise).
    app.default_views = [
        lambda: shown["handler"](ANY, ANY, ""),
        lambda: chart[0]("pareto", "perplexity", DEFAULT_CONTEXT, ANY, ""),
    ]
    return app


def check_host(host: str, public: bool) -> None:
    if host not in LOCAL_HOSTS and not public:
        raise QuantbenchError(
            f"refusing to listen on {host}: anyone who can reach this machine could run trials and read "
            "results; pass --public (and --auth user:pass) if that is what you want"
        )


def serve(
    store: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    public: bool = False,
) -> None:
    """Serve the dashboard until interrupted; prints the URL once it answers."""
    check_host(host, public)
    app = build_app(store)
    app.queue(default_concurrency_limit=4)
    try:
        launch(app, host, port, auth)
    except OSError as exc:  # gradio: "Cannot find empty port in range: ..."
        raise QuantbenchError(f"cannot listen on {host}:{port}: {str(exc).split('. ')[0]}; pass --port N") from None
    # Everything alive now (the libraries' ~330,000 objects, the app) lives as long as the server:
    # kept out of the collector, a full collection, which a burst of requests triggers now and then,
    # no longer walks it (0.16 s each on this machine's 2 cores).
    gc.freeze()
    shown_host = f"[{host}]" if ":" in host else host
    print(f"quantbench ui: http://{shown_host}:{app.server_port}/ (store {store}; Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    keep_warm(app.default_views, stop)
    try:
        app.block_thread()
    finally:
        stop.set()
        app.close()


def launch(app: gr.Blocks, host: str, port: int, auth: tuple[str, str] | None) -> None:
    """Start serving `app` in the background (no share link, no analytics, offline theme)."""
    app.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        allowed_paths=[str(app.export_dir)],
        theme=THEME,
        css=CSS,
        footer_links=["settings"],
    )
