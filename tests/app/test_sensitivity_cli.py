"""`quantbench sensitivity` and `quantbench recipe` end to end on the tiny model."""

import re

from quantbench import models
from quantbench.app.cli import main
from quantbench.app.ui.sensitivity_tab import map_choices
from quantbench.backends.registry import get_backend
from quantbench.results.sensitivity_charts import bar_chart, heat_map
from quantbench.results.sensitivity_maps import unit_maps
from quantbench.results.store import read_results
from quantbench.runner.trial import execute, plan_trial, prepare_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef, validate_params


def test_maps_at_two_widths_give_a_recipe_that_runs_at_its_predicted_bytes(tiny_model_dir, tmp_path, capsys):
    common = ["--model", str(tiny_model_dir), "--tokens", "256", "--seq-len", "64", "--store", str(tmp_path)]
    assert main(["sensitivity", "--method", "rtn:bits=2,group_size=32", *common]) == 0
    # The second map in this process: a worker start costs more than the map of the tiny model.
    eval_spec = EvalSpec("sensitivity", {"max_tokens": 256, "seq_len": 64})
    spec = plan_trial(ModelRef(str(tiny_model_dir)), MethodSpec.parse("rtn:bits=4,group_size=32"), [eval_spec])
    assert execute(prepare_trial(spec, tmp_path), tmp_path).status == "ok"
    assert re.search(r"worst blocks .*\n  model\.layers\.[01] +kld \d\.\d+  top-1", capsys.readouterr().out)
    maps = unit_maps(read_results(tmp_path).frame)
    assert sorted(maps["bits"]) == [2, 2, 4, 4] and set(maps["unit"]) == {"model.layers.0", "model.layers.1"}
    # Beside the units: the trial's fully quantized model, which at 2 bits damages more than any unit alone
    # (at 4 bits the tiny random model's KLD is within the tail estimate's noise of zero).
    stored = read_results(tmp_path).frame
    whole = stored.loc[stored["metric"] == "all_kld_mean"].set_index("trial_key")["value"]
    two = maps[maps["bits"] == 2]
    assert (whole[two["trial_key"]].to_numpy() > two["kld"].to_numpy()).all()

    choices = map_choices(tmp_path)
    assert [key for _, key in choices] == sorted(set(maps["trial_key"]), key=list(maps["trial_key"]).index)
    unit_map = maps[maps["trial_key"] == choices[0][1]]
    assert heat_map(unit_map).data[0].z.shape == (2, 1) and list(bar_chart(unit_map).data[0].x) == list(
        unit_map["unit"]
    )

    recipe = ["recipe", "--store", str(tmp_path)]
    for key in sorted(set(maps["trial_key"])):
        recipe += ["--from-sensitivity", key[:8]]
    assert main([*recipe, "--avg-bits", "4"]) == 0
    out = capsys.readouterr().out
    method = MethodSpec.parse(re.search(r"^quantbench: (\S+)$", out, re.M).group(1))
    assert method.params["layer_bits"] in ("model.layers.0:4", "model.layers.1:4")
    assert re.search(r'^llama-quantize \(type q2_k\): --tensor-type "blk\\\.[01]\\\.=q4_k"$', out, re.M)
    budget, used = (int(n) for n in re.search(r"units: (\d+) bytes of a (\d+)-byte budget", out).groups()[::-1])
    assert used <= budget
    backend = get_backend("rtn")
    resolved = models.resolve(ModelRef(str(tiny_model_dir)))
    trial = backend.quantize(resolved, validate_params(backend.Params, method.params, "rtn"), "cpu")
    assert trial.weight_bytes == int(re.search(r"model weight bytes (\d+)", out).group(1))

    assert main([*recipe, "--avg-bits", "1"]) == 2
    assert re.fullmatch(
        r"quantbench: error: budget of \d+ bytes is below the smallest possible size: .*\n", capsys.readouterr().err
    )
