"""The dashboard's pieces without a browser: the host check, the `ui` command's input errors,
forms generated from the adapters' Params models, and a RunSession driving real trials of a tiny
model (run and cancel), whose store then feeds the comparison table."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd
import pytest

from quantbench.app.cli import main
from quantbench.app.inputs import default_help, eval_specs, from_text
from quantbench.app.ui import check_host
from quantbench.app.ui.compare_tab import comparison_html, direction
from quantbench.app.ui.planner_tab import calibration_frames
from quantbench.app.ui.results_tab import results_frame
from quantbench.app.ui.run_session import RunSession
from quantbench.app.ui.run_tab import changed_params, eval_control, eval_label, param_control
from quantbench.backends.registry import backend_names, get_backend, method_label
from quantbench.errors import QuantbenchError
from quantbench.evals.registry import EVALS, get_eval
from quantbench.planner.calibrate import NOTHING_MEASURED
from quantbench.results.compare import compare
from quantbench.results.query import query, wide
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_public_hosts_need_the_flag(host):
    with pytest.raises(QuantbenchError, match="--public"):
        check_host(host, public=False)
    check_host(host, public=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_local_hosts_are_fine(host):
    check_host(host, public=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0"),
        (["--auth", "justauser"], "--auth expects USER:PASS"),
        (["--auth", ":pw"], "--auth expects USER:PASS"),
    ],
)
def test_ui_command_rejects_bad_input(argv, message, tmp_path, capsys):
    assert main(["ui", "--store", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_forms_follow_each_params_model():
    """Literal -> dropdown of its values, bool -> checkbox, int -> number with the field's bounds."""
    rtn = get_backend("rtn").Params.model_fields
    bits = param_control("rtn", "bits", rtn["bits"])
    assert isinstance(bits, gr.Number) and (bits.minimum, bits.maximum, bits.precision) == (2, 8, 0)
    assert isinstance(param_control("rtn", "symmetric", rtn["symmetric"]), gr.Checkbox)
    dtype = param_control("rtn", "compute_dtype", rtn["compute_dtype"])
    assert dtype.info == "dtype the model is loaded in and computes in (default: float32)"  # its description
    assert isinstance(dtype, gr.Dropdown) and [c[1] for c in dtype.choices] == ["float32", "bfloat16", "float16"]
    skip = param_control("rtn", "skip", rtn["skip"])
    assert isinstance(skip, gr.Textbox) and skip.value == "lm_head"
    bnb_bits = param_control("bnb", "bits", get_backend("bnb").Params.model_fields["bits"])
    assert isinstance(bnb_bits, gr.Dropdown) and [c[1] for c in bnb_bits.choices] == [4, 8]


@pytest.mark.parametrize("name", list(backend_names()))
def test_default_form_values_validate_and_change_nothing(name):
    """Every adapter's form, left at its defaults, yields no parameters (the bare method)."""
    fields = get_backend(name).Params.model_fields
    values = [param_control(name, field, info).value for field, info in fields.items()]
    assert changed_params(fields, values) == {}


def test_only_changed_parameters_are_passed():
    fields = get_backend("rtn").Params.model_fields
    values = [8, 64, False, "lm_head", "bfloat16", ""]  # the last: layer_bits, unset
    assert changed_params(fields, values) == {"bits": 8, "compute_dtype": "bfloat16"}
    # labelled as the same trial typed on the command line is stored: under rtn's stored spelling
    assert method_label(MethodSpec("rtn", changed_params(fields, values))) == "rtn:bits=8,dtype=bfloat16,group_size=64"


@pytest.mark.parametrize("name", list(EVALS))
def test_eval_forms_hold_the_params_defaults_and_descriptions(name):
    """Every field of every eval has a control whose value reads back as the field's default and
    whose help is the field's description; left as it is, the form gives the eval's defaults."""
    params = get_eval(name).Params
    controls = {field: eval_control(name, field, info) for field, info in params.model_fields.items()}
    for field, control in controls.items():
        info = params.model_fields[field]
        assert info.description and control.info == default_help(info)
        assert control.elem_id == f"eval-{name}-{field}"
        value = from_text(info, control.value)
        if info.get_default(call_default_factory=True) in (None, {}):
            assert value in (None, [], ""), (field, control.value)
        else:
            assert params(**{field: value}) == params(), (field, control.value)
    (spec,) = eval_specs([EvalSpec(name)], {name: {f: c.value for f, c in controls.items()}})
    assert plan_trial(ModelRef("m"), MethodSpec("baseline"), [spec]).evals[0].params == {}
    assert eval_label(name) == f"{name}: {params.__doc__.strip()}"


def test_eval_controls_follow_their_field_types():
    latency = get_eval("latency").Params.model_fields
    lengths = eval_control("latency", "prompt_lengths", latency["prompt_lengths"])
    assert isinstance(lengths, gr.Textbox) and lengths.value == "128,512,2048"
    new_tokens = eval_control("latency", "new_tokens", latency["new_tokens"])
    assert isinstance(new_tokens, gr.Number) and (new_tokens.value, new_tokens.minimum) == (32, 2)
    ppl = get_eval("perplexity").Params.model_fields
    max_tokens = eval_control("perplexity", "max_tokens", ppl["max_tokens"])
    assert isinstance(max_tokens, gr.Textbox) and max_tokens.value == ""  # empty = unset, not 0
    assert isinstance(eval_control("memory", "checkpoint", get_eval("memory").Params.model_fields["checkpoint"]),
                      gr.Checkbox)  # fmt: skip


def test_comparison_directions():
    assert direction("perplexity") == "lower"
    assert direction("Δ perplexity") == "lower"
    assert direction("memory saved ×") == "higher"
    assert direction("speed-up × @batch=4") == "higher"
    assert direction("device") == ""


def _wait_for(session: RunSession, status: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(row.status == status for row in session.rows.values()):
            return
        time.sleep(0.1)
    pytest.fail(f"no trial reached {status!r}: {session.snapshot()}")


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """Two real trials of the tiny model started through a RunSession, and their store."""
    store = tmp_path_factory.mktemp("ui-session-store")
    evals = [EvalSpec("perplexity", {"corpus": "builtin", "seq_len": 32, "max_tokens": 96})]
    model = ModelRef(str(tiny_model_dir))
    specs = [plan_trial(model, MethodSpec.parse(m), evals) for m in ("baseline", "rtn:bits=8")]
    session = RunSession(store)
    session.start(specs)
    with pytest.raises(QuantbenchError, match="already in progress"):
        session.start(specs)
    session.wait(300)
    return session, store, model, evals


def test_session_runs_trials_to_the_end(tiny_run):
    session, store, _, _ = tiny_run
    line, table, error = session.snapshot()
    assert error == "" and line.startswith("**Finished**"), line
    assert table["status"].tolist() == ["ok", "ok"]
    assert table["stage"].tolist() == ["perplexity", "perplexity"]  # the last progress event's stage
    shown = results_frame(wide(query(store).frame))
    assert sorted(shown["method"]) == ["baseline:dtype=float32", "rtn:bits=8,group_size=64"]
    assert shown["ppl"].dtype.kind == "f" and (shown["ppl"] > 1).all()  # numbers, so the column sorts


def test_session_rerun_is_skipped(tiny_run):
    session, _, model, evals = tiny_run
    session.start([plan_trial(model, MethodSpec("baseline"), evals)])
    session.wait(120)
    assert session.snapshot()[1]["status"].iloc[0].startswith("skipped: already in the store")


def test_session_cancel_kills_the_trial_and_stores_nothing(tiny_run):
    session, store, model, evals = tiny_run
    before = set(query(store).frame["trial_key"])
    session.start([plan_trial(model, MethodSpec.parse("rtn:bits=4"), evals)])
    _wait_for(session, "running")
    assert session.cancel()
    session.wait(60)
    line, table, _ = session.snapshot()
    assert line.startswith("**Cancelled**") and table["status"].iloc[0] == "cancelled"
    assert set(query(store).frame["trial_key"]) == before
    assert not session.cancel()  # nothing left to cancel


def test_session_reports_bad_input_found_before_any_trial(tiny_run, tmp_path):
    session, _, _, evals = tiny_run
    session.start([plan_trial(ModelRef(str(tmp_path / "nope")), MethodSpec("baseline"), evals)])
    session.wait(60)
    line, table, error = session.snapshot()
    assert "not found" in error and line.startswith("**Run stopped**")
    assert table["status"].tolist() == ["not started"]


def test_comparison_table_highlights_against_the_reference(tiny_run):
    _, store, _, _ = tiny_run
    frame = query(store).frame
    table = wide(frame)
    keys = table.sort_values("method_label")["trial_key"].tolist()  # baseline, rtn:bits=8
    page = comparison_html(compare(frame, keys))
    assert page.index("baseline") < page.index("(reference)") < page.index("rtn:bits=8")
    # rtn at 8 bits stores fewer weight bytes than the fp32 baseline: its ratio cell is better.
    ratio_row = page.split("<th>memory saved ×</th>")[1].split("</tr>")[0]
    assert ratio_row.count('class="qb-better"') == 1


def test_failed_trial_shows_its_error(tiny_model_dir, tmp_path):
    """A trial killed by its timeout is stored as failed; the Results table carries its reason."""
    evals = [EvalSpec("perplexity", {"corpus": "builtin", "seq_len": 32, "max_tokens": 96})]
    session = RunSession(tmp_path)
    session.start([plan_trial(ModelRef(str(tiny_model_dir)), MethodSpec("baseline"), evals)], timeout_s=0.5)
    session.wait(120)
    assert session.snapshot()[1]["status"].iloc[0] == "failed: timed out after 0.5 s (worker killed)"
    shown = results_frame(wide(query(tmp_path).frame))
    assert shown[["status", "error"]].values.tolist() == [["failed", "timed out after 0.5 s (worker killed)"]]


def test_planner_calibration_of_a_store_without_memory_rows_is_one_message():
    frame = pd.DataFrame(
        [{"trial_key": "k", "model_ref": "m", "method": "baseline", "method_label": "baseline", "params_json": "{}",
          "device": "cpu", "status": "ok", "metric": "perplexity", "value": 30.0}]
    )  # fmt: skip
    with pytest.raises(QuantbenchError, match="no finished trial in the store measured") as caught:
        calibration_frames(frame)
    assert str(caught.value) == NOTHING_MEASURED
