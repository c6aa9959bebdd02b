"""ETTh1 one-day-ahead forecasting: the LSTM recipe against persistence and NLinear.

Trains recipes/etth1-lstm.toml, then in the same run and on the same windows: NLinear (the recipe
with its LSTM swapped for one linear layer; Zeng et al., "Are Transformers Effective for Time
Series Forecasting?", AAAI 2023) and persistence (every hour of the horizon = the last observed
hour). Prints the test MSE and MAE on the standardised scale that papers report, and ratios.

    python benchmarks/forecast_ett.py            # full recipe
    python benchmarks/forecast_ett.py --quick    # 2 epochs each
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import torch

from strata.api import train
from strata.build import load_config
from strata.data import load_data

ROOT = Path(__file__).resolve().parent.parent


def persistence(split, info) -> dict:
    k = info["target_input_index"][0]
    last = split.tensors["x"][:, -1, k] * info["input_std"][k] + info["input_mean"][k]
    err = (split.tensors["y"] - last[:, None]) / torch.tensor(info["target_std"])
    return {"mse": float(err.pow(2).mean()), "mae": float(err.abs().mean())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "etth1")
    args = ap.parse_args(argv)
    recipe = ROOT / "recipes" / "etth1-lstm.toml"
    quick = ["trainer.max_epochs=2"] if args.quick else []
    raw = tomllib.loads(recipe.read_text())
    linear = {**raw, "name": "etth1-nlinear", "model": {"name": "mlp", "hidden": []}}  # one linear layer
    rows = {}
    for name, config in (("lstm (recipe)", raw), ("nlinear", linear)):
        t0 = time.perf_counter()
        res = train(config, overrides=quick, run_dir=args.run_dir / name.split()[0])
        s, std = res.summary, res.task.info["target_std"][0]
        rows[name] = {"mse": s["test/loss"], "mae": s["test/mae"] / std, "seconds": time.perf_counter() - t0}
    bundle = load_data(load_config(recipe).data)
    rows["persistence"] = persistence(bundle.test, bundle.info)
    ref = rows["persistence"]
    print(f"{'ETTh1 test, 96 h -> 24 h':26s} {'MSE':>8s} {'MAE':>8s} {'MSE / persistence':>18s}")
    for name, r in rows.items():
        print(f"{name:26s} {r['mse']:8.4f} {r['mae']:8.4f} {r['mse'] / ref['mse']:18.3f}"
              + (f"   ({r['seconds']:.0f} s)" if "seconds" in r else ""))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
