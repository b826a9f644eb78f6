"""Accuracy on lm-evaluation-harness tasks, run on the already-quantized model (no reload).

`lm_eval.simple_evaluate` scores the stock task configs through `ProtocolLM` (protocol_lm.py), an
lm-eval `LM` on the model protocol's `logits` that scores as lm-eval's HFLM does, so every
backend, whatever engine runs it, is measured by the same prompts and metrics.

Offline data: `task_data` maps a stock task to a local file (`--task-data piqa=valid.jsonl`).
The file is converted, where its published layout differs from the Hugging Face dataset the
task reads, into that dataset's rows; a task config is then written that `include:`s the stock
YAML and only swaps the dataset for the local JSON file (lm-eval's own `include` mechanism), so
prompts, targets and metrics stay the stock ones. The task's evaluation split (test, else
validation) is the file; few-shot examples, if asked for, are drawn from it too, the current
document excluded, as lm-eval does for tasks without a training split. Layouts understood:
- lambada_openai: jsonl with `text` (OpenAI's `lambada_test.jsonl`);
- piqa: jsonl with `goal`, `sol1`, `sol2`, and `label` or the labels file `<stem>-labels.lst`;
- arc_easy / arc_challenge: AI2's jsonl (`question.stem`, `question.choices`) or the HF rows;
- winogrande: jsonl with `sentence`, `option1`, `option2`, and `answer` or `<stem>-labels.lst`;
- hellaswag: the official jsonl, or llama.cpp's 6-lines-per-item text (.txt, .txt.bz2); that
  form lost the ctx_a/ctx_b split, so the stock capitalisation of ctx_b's first letter is absent;
- any other task: a .json/.jsonl file already in its HF dataset's row layout.

Metrics: `task:<task>:<metric>` and `task:<task>:<metric>_stderr` (a non-default lm-eval filter
is appended as `@<filter>`), and `task:<task>:samples`.
"""

from __future__ import annotations

import bz2
import functools
import importlib.metadata
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantbench import models
from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.models import ResolvedModel


class TasksParams(BaseModel):
    """lm-evaluation-harness accuracy (needs the task data offline)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...] = Field(("lambada_openai",), description="lm-eval task names, comma-separated")
    task_data: dict[str, str] = Field(
        default_factory=dict, description="TASK=FILE, a local copy of a task's data, comma-separated (needed offline)"
    )
    limit: int | None = Field(None, ge=1, description="documents per task; unset = all")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; unset = the task's own")
    batch_size: int = Field(1, ge=1, description="lm-eval requests per forward pass")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return tuple(name.strip() for text in value for name in str(text).split(",") if name.strip())
        return value

    @field_validator("task_data", mode="before")
    @classmethod
    def _parse_pairs(cls, value: object) -> object:
        """`--task-data` gives ["name=path", ...]; paths are made absolute so the trial key is stable."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            pairs = {}
            for item in value:
                name, sep, path = str(item).partition("=")
                if not sep or not name.strip() or not path.strip():
                    raise ValueError(f"task data {item!r} is not of the form task=path")
                pairs[name.strip()] = path.strip()
            value = pairs
        if isinstance(value, dict):
            return {name: str(Path(path).expanduser().absolute()) for name, path in value.items()}
        return value

    @model_validator(mode="after")
    def _data_for_requested_tasks(self) -> TasksParams:
        if not self.tasks:
            raise ValueError("no task given")
        extra = sorted(set(self.task_data) - set(self.tasks))
        if extra:
            raise ValueError(f"task data given for {', '.join(extra)}, which is not among the tasks")
        return self


Params = TasksParams


# ---------------------------------------------------------------- local data: published layout -> HF rows


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise QuantbenchError(f"task data {path}, line {number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise QuantbenchError(f"task data {path}, line {number}: not a JSON object")
        rows.append(row)
    if not rows:
        raise QuantbenchError(f"task data {path} holds no rows")
    return rows


def _require(path: Path, rows: list[dict], fields: tuple[str, ...], task: str) -> None:
    for number, row in enumerate(rows, start=1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise QuantbenchError(
                f"task data {path}, row {number}: {task} needs fields {', '.join(fields)}; missing {', '.join(missing)}"
            )


def _with_labels(path: Path, rows: list[dict], field: str, task: str) -> list[dict]:
    """Fill `field` from the `<stem>-labels.lst` file published beside the data, if rows lack it."""
    if all(field in row for row in rows):
        return rows
    labels_file = path.with_name(f"{path.stem}-labels.lst")
    if not labels_file.is_file():
        raise QuantbenchError(f"task data {path}: {task} rows have no {field!r} and there is no {labels_file.name}")
    labels = labels_file.read_text().split()
    if len(labels) != len(rows):
        raise QuantbenchError(f"task data {path}: {len(rows)} rows but {len(labels)} labels in {labels_file.name}")
    return [{**row, field: label} for row, label in zip(rows, labels, strict=True)]


def _lambada(path: Path) -> list[dict]:
    rows = _jsonl(path)
    _require(path, rows, ("text",), "lambada_openai")
    return [{"text": row["text"]} for row in rows]


def _piqa(path: Path) -> list[dict]:
    rows = _jsonl(path)
    _require(path, rows, ("goal", "sol1", "sol2"), "piqa")
    return [{**row, "label": int(row["label"])} for row in _with_labels(path, rows, "label", "piqa")]


def _winogrande(path: Path) -> list[dict]:
    rows = _jsonl(path)
    _require(path, rows, ("sentence", "option1", "option2"), "winogrande")
    return [{**row, "answer": str(row["answer"])} for row in _with_labels(path, rows, "answer", "winogrande")]


def _arc(path: Path) -> list[dict]:
    rows = _jsonl(path)
    _require(path, rows, ("question", "answerKey"), "arc")
    out = []
    for number, row in enumerate(rows, start=1):
        question = row["question"]
        if isinstance(question, dict):  # AI2's layout: the choices live inside the question
            if "stem" not in question or "choices" not in question:
                raise QuantbenchError(f"task data {path}, row {number}: arc question needs 'stem' and 'choices'")
            choices = question["choices"]
            question = question["stem"]
            choices = {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}
        else:
            choices = row.get("choices")
        if not isinstance(choices, dict) or row["answerKey"] not in choices.get("label", []):
            raise QuantbenchError(f"task data {path}, row {number}: arc answerKey is not one of the choice labels")
        out.append({"id": row.get("id", str(number)), "question": question, "choices": choices,
                    "answerKey": row["answerKey"]})  # fmt: skip
    return out


def _hellaswag(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = _jsonl(path)
        _require(path, rows, ("activity_label", "ctx_a", "ctx_b", "endings", "label"), "hellaswag")
        return rows
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or len(lines) % 6:
        raise QuantbenchError(f"task data {path}: hellaswag text form needs 6 lines per item, got {len(lines)} lines")
    rows = []
    for at in range(0, len(lines), 6):
        head, label, *endings = lines[at : at + 6]
        activity, sep, context = head.partition(": ")
        if not sep or label not in ("0", "1", "2", "3"):
            raise QuantbenchError(f"task data {path}, line {at + 1}: not 'activity: context' followed by a label 0-3")
        # The text form holds the already-preprocessed "activity: ctx"; the stock process_docs
        # rebuilds exactly that from activity_label, ctx_a and an empty ctx_b.
        rows.append({"activity_label": activity, "ctx_a": context, "ctx_b": "", "endings": endings, "label": label})
    return rows


def _as_is(path: Path) -> list[dict]:
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise QuantbenchError(f"task data {path}: not valid JSON") from None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise QuantbenchError(f"task data {path}: expected a JSON list of objects")
        return rows
    return _jsonl(path)


CONVERTERS: dict[str, Callable[[Path], list[dict]]] = {
    "lambada_openai": _lambada,
    "piqa": _piqa,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "winogrande": _winogrande,
    "hellaswag": _hellaswag,
}


def local_rows(task: str, path: str) -> list[dict]:
    """Rows of a local data file in the layout of the HF dataset that `task` reads."""
    file = Path(path)
    if not file.is_file():
        raise QuantbenchError(f"task data for {task}: {file} does not exist")
    try:
        return CONVERTERS.get(task, _as_is)(file)
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise QuantbenchError(f"task data {file}: cannot read it ({type(exc).__name__})") from None


# ---------------------------------------------------------------- lm-eval's task index


@functools.cache
def stock_tasks() -> dict[str, tuple[str, str | None]]:
    """name -> (kind, YAML path) of every task, group and tag lm-eval ships.

    Building lm-eval's index parses its ~14,000 YAML files (35-75 s on 2 cores), so the mapping
    is memoized on disk per lm-eval version and install location."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    version = importlib.metadata.version("lm_eval")
    root = Path(lm_eval.tasks.__file__).parent
    memo = models.cache_dir() / "lm_eval" / f"tasks-{version}.json"
    try:
        saved = json.loads(memo.read_text())
        if saved["root"] == str(root):
            return {name: tuple(entry) for name, entry in saved["tasks"].items()}
    except (OSError, ValueError, KeyError):
        pass  # absent or damaged: rebuild
    index = TaskManager().task_index
    tasks = {name: (e.kind.name, str(e.yaml_path) if e.yaml_path else None) for name, e in index.items()}
    models.atomic_write_text(memo, json.dumps({"root": str(root), "tasks": tasks}))
    return tasks


def _stock_yaml(task: str) -> str:
    entry = stock_tasks().get(task)
    if entry is None:
        raise QuantbenchError(f"lm-eval does not know the task {task!r} (lm_eval {_lm_eval_version()})")
    kind, yaml_path = entry
    if kind not in ("TASK", "PY_TASK") or yaml_path is None:
        raise QuantbenchError(f"{task!r} is an lm-eval {kind.lower()}, not a single task; name its tasks instead")
    return yaml_path


def _lm_eval_version() -> str:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise QuantbenchError("the tasks eval needs lm-evaluation-harness: pip install lm_eval") from None


def task_config(task: str, data_file: Path | None) -> dict:
    """A task config that includes the stock one; with `data_file`, only its dataset is swapped."""
    config: dict = {"include": _stock_yaml(task), "task": task}
    if data_file is None:
        return config
    from lm_eval.tasks._yaml_loader import load_yaml

    stock = load_yaml(config["include"], resolve_func=False)
    has_test = bool(stock.get("test_split"))
    split = stock["test_split"] if has_test else stock.get("validation_split")
    if split is None:
        raise QuantbenchError(f"lm-eval task {task!r} has no test or validation split to replace with local data")
    config.update(
        dataset_path="json",
        dataset_name=None,
        # datasets' Arrow copy goes beside the file, into the temp dir, instead of piling up in ~/.cache
        dataset_kwargs={"data_files": {split: str(data_file)}, "cache_dir": str(data_file.parent / "datasets")},
        training_split=None,
        validation_split=None if has_test else split,
        test_split=split if has_test else None,
        fewshot_split=None,
    )
    return config


# ---------------------------------------------------------------- the eval


def check_inputs(source: ResolvedModel, params: TasksParams, corpus: Corpus | None) -> None:
    """Every task known to lm-eval and every data file readable in its task's layout."""
    _lm_eval_version()
    for task in params.tasks:
        _stock_yaml(task)
    for task, path in params.task_data.items():
        local_rows(task, path)


def evaluate(model: QuantizedModel, params: TasksParams) -> dict:
    """lm-eval's results dict for `params.tasks` on the quantized model."""
    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from quantbench.evals.protocol_lm import ProtocolLM  # imports lm_eval's model code, so only when run

    datasets.disable_progress_bars()  # one bar per split and map drowns the trial's output
    with tempfile.TemporaryDirectory(prefix="quantbench-tasks-") as tmp:
        for task in params.tasks:
            data_file = None
            if task in params.task_data:
                data_file = Path(tmp) / f"{task}.jsonl"
                rows = local_rows(task, params.task_data[task])
                data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
            # JSON is YAML; lm-eval resolves `include` and the stock `!function`s relative to the stock file.
            (Path(tmp) / f"{task}.yaml").write_text(json.dumps(task_config(task, data_file)))
        manager = TaskManager(include_path=tmp, include_defaults=False)
        return simple_evaluate(
            model=ProtocolLM(model, params.batch_size),
            tasks=list(params.tasks),
            task_manager=manager,
            limit=params.limit,
            num_fewshot=params.num_fewshot,
            log_samples=False,
            bootstrap_iters=1000,
        )


def metric_rows(results: dict) -> list[tuple[str, float, str]]:
    """lm-eval's `results` as store rows named task:<task>:<metric>[_stderr][@filter]."""
    rows = []
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                continue  # alias, and stderr "N/A" where lm-eval has none
            suffix = "" if filter_name == "none" else f"@{filter_name}"
            rows.append((f"task:{task}:{metric}{suffix}", float(value), ""))
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            rows.append((f"task:{task}:samples", float(samples), "docs"))
    return rows


def run(
    model: QuantizedModel, params: TasksParams, corpus: Corpus | None, source: ResolvedModel
) -> list[tuple[str, float, str]]:
    """The eval-registry entry point: lm-eval task scores of `model`."""
    return metric_rows(evaluate(model, params))
