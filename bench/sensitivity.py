"""Per-unit sensitivity maps of the embedded model, and mixed-precision recipes against uniform bits.

1. `quantbench sensitivity` for each `--map` method (default: rtn at 4 bits, hqq at 4, rtn at 3, 8 and 2),
   on the builtin corpus's first `--tokens` tokens, one unit per decoder block or (`--units
   projections`) per weight matrix: wall time, and the worst units.
2. `quantbench recipe` from the rtn maps, for each `--recipe B=W,W,...` (default 3=2,3,4 and
   4=3,4,8): bits per unit among the widths W at exactly uniform B-bit's weight bytes.
3. `quantbench run --eval divergence` of each uniform B and its recipe on held-out text (WikiText-2
   test, not the text the maps were measured on), for each recipe whose maps are in the store:
   maps already in `--store` are not measured again, so calls with a few `--map`s add up.

Prints one JSON object (machine, versions, date, numbers) and the Markdown tables used in README.

    nice .venv/bin/python bench/sensitivity.py --data ../shared/data
    nice .venv/bin/python bench/sensitivity.py --data ../shared/data --units projections --recipe 4=3,4,5,6,8 \
        --map rtn:bits=3 --map rtn:bits=4 --map rtn:bits=5 --map rtn:bits=6 --map rtn:bits=8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from quantbench.app.cli import main as quantbench
from quantbench.backends.registry import method_label
from quantbench.results.query import wide
from quantbench.results.recipe import from_maps
from quantbench.results.sensitivity_maps import top_offenders, unit_maps
from quantbench.results.store import read_results
from quantbench.runner import environment
from quantbench.spec import MethodSpec

MAPS = ["rtn:bits=4", "hqq:bits=4", "rtn:bits=3", "rtn:bits=8", "rtn:bits=2"]
RECIPES = ["3=2,3,4", "4=3,4,8"]  # uniform rtn bits = the widths its equal-size recipe may use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--map", action="append", help=f"repeatable (default: {' '.join(MAPS)})")
    parser.add_argument("--units", choices=("blocks", "projections"), default="blocks", help="what one unit is")
    parser.add_argument(
        "--recipe", action="append", help=f"B=W,W,...: repeatable (default: {' '.join(RECIPES)}); needs rtn maps at W"
    )
    parser.add_argument("--tokens", type=int, default=256, help="builtin-corpus tokens each map scores per unit")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out WikiText-2 tokens for the recipes")
    parser.add_argument("--store", type=Path, help="results directory (default: a fresh temp dir)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="quantbench-sensitivity-"))
    window = ["--tokens", str(args.tokens), "--seq-len", str(args.seq_len), "--store", str(store)]
    window += ["--units", args.units]

    walls = {}
    for method in args.map or MAPS:
        start = time.perf_counter()
        if quantbench(["sensitivity", "--model", args.model, "--method", method, "--top", "5", *window]) != 0:
            raise SystemExit(f"sensitivity map of {method} failed")
        walls[method] = time.perf_counter() - start
    frame = read_results(store).frame
    maps = unit_maps(frame)
    table = wide(frame).set_index("trial_key")
    key_of = {m: _key(maps, m, args.units) for m in walls}

    recipes = []
    for text in args.recipe or RECIPES:
        base, _, widths = text.partition("=")
        uniform = f"rtn:bits={base}"
        keys = [key_of[f"rtn:bits={b}"] for b in widths.split(",") if f"rtn:bits={b}" in key_of]
        if uniform in key_of and len(keys) == len(widths.split(",")):
            # The budget is uniform B's own whole-model bytes by the same layout formula: its map alone
            # leaves every unit at B bits.
            size = from_maps(frame, [key_of[uniform]], avg_bits=float(base) + 8).weight_bytes
            planned = from_maps(frame, keys, weight_bytes=size)
            recipes.append((uniform, planned.method_string(), planned.recipe.bits))
    methods = [m for uniform, mixed, _ in recipes for m in (uniform, mixed)]
    held_out = args.data / "wikitext2" / "wiki.test.raw"
    run = ["run", "--model", args.model, "--eval", "divergence", "--corpus", str(held_out), "--store", str(store)]
    run += ["--seq-len", "512", "--max-tokens", str(args.eval_tokens)]
    for method in methods:
        run += ["--method", method]
    if methods and quantbench(run) != 0:
        raise SystemExit("a recipe trial failed")
    results = wide(read_results(store).frame)
    measured = results["kld_mean"].notna() if "kld_mean" in results else results["trial_key"].isna()  # maps only: none
    evaluated = results[measured].drop_duplicates("method_label").set_index("method_label")

    report = {
        "machine": environment.hardware("cpu"),
        "versions": environment.versions("torch"),
        "date": dt.date.today().isoformat(),
        "tokens": args.tokens,
        "units": args.units,
        "maps": {
            m: {
                "wall_s": round(walls[m], 1),
                "map_s": round(float(table.loc[key_of[m], "map_seconds"]), 1),
                "floor": float(table.loc[key_of[m], "float_kld_mean"]),
                "all_kld": float(table.loc[key_of[m], "all_kld_mean"]),
                "units": {r.unit: round(r.kld, 6) for r in maps[maps["trial_key"] == key_of[m]].itertuples()},
            }
            for m in walls
        },
        "recipes": [],
    }
    # map_seconds: the map's own loop (stored with it), so a map already in the store keeps its time.
    print("| map | units | map time (loop only) | float floor | whole model KLD | sum of unit KLDs ", end="")
    print(f"| worst {args.units} (KLD) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for m in walls:
        unit_map = maps[maps["trial_key"] == key_of[m]]
        worst = ", ".join(f"{_short(r.unit)} ({r.kld:.4f})" for r in top_offenders(unit_map, 3).itertuples())
        entry = report["maps"][m]
        print(f"| `{m}` | {len(unit_map)} | {entry['map_s']:.0f} s | {entry['floor']:.6f} | {entry['all_kld']:.4f} | "
              f"{unit_map['kld'].sum():.4f} | {worst} |")  # fmt: skip
    print("\n| method | weight bytes | bits/weight | KLD mean ± se | top-1 % |")
    print("|---|---:|---:|---:|---:|")
    for uniform, mixed, bits in recipes:
        for method in (uniform, mixed):
            row = evaluated.loc[method_label(MethodSpec.parse(method))]
            measured = {"weight_bytes": int(row["weight_bytes"]), "kld_mean": float(row["kld_mean"])}
            report["recipes"].append({"method": method, **measured, "top1": float(row["top1_agreement"])})
            widths = "/".join(map(str, sorted(set(bits.values()))))
            shown = method if method == uniform else f"recipe {widths} ({args.units})"
            print(f"| `{shown}` | {int(row['weight_bytes'])} | {row['bits_per_weight']:.3f} | "
                  f"{row['kld_mean']:.4f} ± {row['kld_mean_stderr']:.4f} | {row['top1_agreement']:.2f} |")  # fmt: skip
    print(json.dumps(report, indent=1))


def _key(maps, method: str, units: str) -> str:
    """The stored map of `method` (its bits) over `units` — the newest if the store holds several."""
    spec = MethodSpec.parse(method)
    rows = maps[(maps["method"] == spec.name) & (maps["bits"] == int(spec.params["bits"])) & (maps["units"] == units)]
    return rows["trial_key"].iloc[-1]


def _short(unit: str) -> str:
    """`29` for block model.layers.29, `29 mlp.down_proj` for one of its projections."""
    head, _, projection = unit.partition(".layers.")[2].partition(".")
    return f"{head} {projection}".strip() if head else unit


if __name__ == "__main__":
    main()
