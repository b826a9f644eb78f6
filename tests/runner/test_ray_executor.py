"""The Ray executor on a local Ray instance started by the test: the same sweep gives the same
results as the local executor."""

import pytest

from quantbench.app.cli import main
from quantbench.results.store import read_results

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_runs_a_two_trial_sweep_like_the_local_executor(tmp_path, tiny_model_dir, local_ray):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"models: [{tiny_model_dir}]\nmethods: [baseline, 'baseline:dtype=bfloat16']\n"
        "evals: {perplexity: {seq_len: 32, max_tokens: 96}}\n"
    )
    assert main(["sweep", str(sweep), "--store", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert main(["sweep", str(sweep), "--store", str(tmp_path / "local")]) == 0

    def perplexities(store):
        frame = read_results(store).frame
        rows = frame[frame["metric"] == "perplexity"]
        return dict(zip(rows["trial_key"], rows["value"], strict=True))

    on_ray, local = perplexities(tmp_path / "ray"), perplexities(tmp_path / "local")
    assert len(on_ray) == 2
    assert on_ray.keys() == local.keys()
    assert on_ray == pytest.approx(local, rel=1e-6)
