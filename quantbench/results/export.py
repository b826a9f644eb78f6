"""Write the trials of a query to a file: CSV, Parquet, JSON (every column, raw SI units, one row
per trial), Markdown and LaTeX (the headline columns as displayed, best value per column in
bold), a self-contained HTML report (tables and interactive charts, plotly.js inlined so it
opens offline), or a PNG of one chart (kaleido, which drives a Chromium or Chrome browser).

Every output path is confined to a directory chosen by the caller (the UI's export folder,
the CLI's `--dir`): a name that climbs out with `..`, or an absolute path elsewhere, is refused.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from quantbench.errors import QuantbenchError
from quantbench.files import atomic_path
from quantbench.results.columns import best_rows, display_table
from quantbench.results.noise import with_verdicts
from quantbench.results.query import wide

FORMATS = ("md", "csv", "parquet", "latex", "json", "html", "png")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def confine(directory: Path, name: str | Path) -> Path:
    """`name` resolved inside `directory`, or QuantbenchError if it would land anywhere else."""
    if ".." in Path(name).parts:
        raise QuantbenchError(f"export path {str(name)!r} must not contain '..'")
    root = Path(directory).resolve()
    target = (root / name).resolve()  # an absolute `name` replaces root here, then is checked
    if not target.is_relative_to(root) or target == root:
        raise QuantbenchError(f"export path {str(name)!r} is outside the export directory {root}")
    return target


def export(
    frame: pd.DataFrame,
    fmt: str,
    directory: Path,
    name: str | Path,
    chart: str = "pareto",
    everything: pd.DataFrame | None = None,
) -> Path:
    """Write the trials in tidy `frame` as `fmt` to `name` inside `directory`; returns the path.
    Each trial's verdict against the noise floor is judged on `everything` (default: `frame`), so
    pass the whole store when `frame` is a filtered part of it."""
    if fmt not in FORMATS:
        raise QuantbenchError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    path = confine(directory, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        write_png(frame, path, chart)
        return path
    table = with_verdicts(wide(frame), frame if everything is None else everything)
    writers: dict[str, Callable[[pd.DataFrame, Path], None]] = {
        "csv": lambda t, p: t.to_csv(p, index=False),
        "parquet": lambda t, p: t.to_parquet(p, index=False),
        "json": lambda t, p: p.write_text(to_json(t)),
        "md": lambda t, p: p.write_text(to_markdown(t)),
        "latex": lambda t, p: p.write_text(to_latex(t)),
        "html": lambda t, p: p.write_text(to_html(frame, t)),
    }
    with atomic_path(path) as tmp:
        writers[fmt](table, tmp)
    return path


def to_json(table: pd.DataFrame) -> str:
    """A list of trial records; NaN (metric not measured) becomes null, times ISO 8601."""
    return table.to_json(orient="records", date_format="iso", date_unit="us", indent=1)


def _marked(table: pd.DataFrame, bold: Callable[[str], str], escape: Callable[[str], str]) -> pd.DataFrame:
    """The display table with cells escaped for the target markup, then the best values bolded."""
    shown = display_table(table).map(escape)
    for title, rows in best_rows(table).items():
        shown[title] = [bold(v) if i in rows and v else v for i, v in enumerate(shown[title])]
    return shown


def to_markdown(table: pd.DataFrame) -> str:
    shown = _marked(table, lambda v: f"**{v}**", lambda v: str(v).replace("|", "\\|"))
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "|".join("---" for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {c: f"\\{c}" for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); numbers right-aligned, best in bold."""
    shown = _marked(table, lambda v: f"\\textbf{{{v}}}", latex_escape)
    align = "l" * 5 + "r" * (len(shown.columns) - 5)
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in shown.columns) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join(row) + " \\\\" for row in shown.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(frame: pd.DataFrame, table: pd.DataFrame) -> str:
    """One page: headline table, every chart, every column; opens without a network."""
    from quantbench.results.charts import CHARTS

    headline = _marked(table, lambda v: f"<b>{v}</b>", lambda v: html.escape(str(v))).to_html(index=False, escape=False)
    figures = [build(frame) for build in CHARTS.values()]
    charts = [
        # The first chart carries plotly.js inline (~4.7 MB); the others reuse it.
        figure.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, figure in enumerate(f for f in figures if f.data)  # a chart with nothing measured is left out
    ]
    everything = table.to_html(index=False, na_rep="")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"><title>quantbench report</title>',
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>",
            f"<h1>quantbench report</h1><p>{len(table)} trials, written {created}. Best value per column in bold.</p>",
            headline,
            "<h2>Charts</h2>",
            *charts,
            "<h2>All measurements</h2>",
            "<p>Raw units: bytes, seconds, tokens/s.</p>",
            everything,
            "</body></html>",
        ]
    )


def write_png(frame: pd.DataFrame, path: Path, chart: str) -> None:
    """A static image of one chart through kaleido, which needs a Chromium or Chrome browser."""
    from quantbench.results.charts import CHARTS

    if chart not in CHARTS:
        raise QuantbenchError(f"unknown chart {chart!r}; valid charts: {', '.join(CHARTS)}")
    try:
        import kaleido  # noqa: F401 (plotly finds it by import)
    except ImportError:
        raise QuantbenchError("PNG export needs kaleido: pip install kaleido (or export html)") from None
    if not (os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in BROWSERS)):
        raise QuantbenchError(
            "PNG export needs a Chromium or Chrome browser for kaleido and none was found "
            "(Debian: apt-get install chromium, or set BROWSER_PATH); the html export has the same charts"
        )
    CHARTS[chart](frame).write_image(path, format="png", width=1000, height=600)
