"""Stored sensitivity rows read back as maps and as the heat map's grid."""

import pandas as pd

from quantbench.results.sensitivity_maps import heat_grid, top_offenders

UNITS = [f"model.layers.{b}.{p}" for b in (0, 1) for p in ("self_attn.q_proj", "mlp.down_proj")]
MAP = pd.DataFrame({"unit": UNITS, "kld": [0.1, 0.4, 0.2, 0.3]})


def test_a_projections_map_is_a_grid_of_blocks_by_projection_type():
    grid = heat_grid(MAP)
    assert list(grid.index) == ["model.layers.0", "model.layers.1"]
    assert list(grid.columns) == ["self_attn.q_proj", "mlp.down_proj"]
    assert grid.loc["model.layers.1", "mlp.down_proj"] == 0.3


def test_top_offenders_are_the_worst_first():
    assert list(top_offenders(MAP, 2)["unit"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
