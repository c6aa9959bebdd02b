"""Learning from unlabelled images, measured: test accuracy with 100 labels (10 per class) on MNIST or
Fashion-MNIST, over several draws of the labelled images, for

- scratch:    the SimCLR fine-tuning network from random weights, trained on the 100 labelled images
              alone, every layer from the first step (shift augmentation);
- scratch-semi: the semi-supervised recipe's network (its cnn) trained the same way on the 100 alone;
- semi:       FixMatch on the 100 labelled images + the other training images without their labels
              (recipes/mnist-semi-100labels.toml);
- simclr-ft:  the SimCLR encoder and the hidden layer of its projection head (recipes/mnist-simclr.toml,
              pretrained on the training images, labels unused) fine-tuned on the 100 labelled images,
              the head alone first (LP-FT, recipes/mnist-simclr-100labels.toml);
- simclr-probe: a linear classifier on those frozen SimCLR features, the same 100 labels.

The networks: two conv stages of 32 and 64 channels, a 256-wide layer and a linear head (scratch,
simclr-ft, simclr-probe: 600 steps), or 16 and 32 channels, a 128-wide dense layer and a linear head
(scratch-semi: 300 steps, and semi); scratch, scratch-semi and simclr-ft share the fine-tuning recipe
(recipes/mnist-simclr-100labels.toml). A draw is
`data.split_seed`: which 10 images of every class keep their labels. The test set is the official one.
Finished runs are kept under --runs and reused, so a killed benchmark resumes where it stopped.

    STRATA_DATA_MIRROR=... OMP_NUM_THREADS=1 python benchmarks/unlabelled_100labels.py [--data fashion_mnist]
        [--draws 3] [--pretrained-run runs/mnist-simclr] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from strata.api import train
from strata.build import load_config

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def recipe(name: str, data: str, tag: str, overrides: dict, sets: list[str] = ()) -> dict:
    """The recipe with `sets` ("section.key=value", as strata train --set) and then `overrides` applied."""
    cfg = load_config(RECIPES / name, list(sets)).to_dict()
    cfg["name"] = f"{data}-{tag}"
    cfg["data"]["name"] = data
    for key, value in overrides.items():
        if "." not in key:  # a whole section
            cfg[key] = value
            continue
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def run(cfg: dict, run_dir: Path) -> dict:
    """A finished run's summary; trains it first unless run_dir already holds a finished one."""
    done = run_dir / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    return train(cfg, run_dir=run_dir).summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--draws", type=int, default=3, help="draws of the 100 labelled images (split_seed 0, 1, ...)")
    ap.add_argument("--draw", type=int, action="append", help="only this draw (repeatable): to run draws in parallel")
    ap.add_argument("--pretrained-run", type=Path, help="a finished contrastive run; default: train one")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "unlabelled-100labels")
    ap.add_argument("--only", nargs="+", choices=["scratch", "scratch-semi", "semi", "simclr-ft", "simclr-probe"],
                    default=["scratch", "scratch-semi", "semi", "simclr-ft", "simclr-probe"])
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few hundred steps each")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="an override of the SimCLR fine-tuning recipe (scratch, simclr-ft, simclr-probe), "
                         "e.g. model.projection_layers=0; a TOML value")
    args = ap.parse_args(argv)
    runs = args.runs / args.data
    quick = {"trainer.max_steps": 60} if args.quick else {}

    pre = args.pretrained_run
    if pre is None and {"simclr-ft", "simclr-probe"} & set(args.only):
        pre = runs / "simclr"
        s = run(recipe("mnist-simclr.toml", args.data, "simclr", quick), pre)
        print(f"SimCLR pretraining: val/top1 {s.get('val/top1', float('nan')):.3f}, {s['wall_time_s']:.0f}s", flush=True)

    methods = {
        "scratch": ("mnist-simclr-100labels.toml", {"model.pretrained": False, "model.probe_steps": 0}),
        "scratch-semi": ("mnist-simclr-100labels.toml",
                         {"model": load_config(RECIPES / "mnist-semi-100labels.toml").to_dict()["model"],
                          "trainer.max_epochs": 60}),  # as measured before the SimCLR fine-tune became LP-FT
        "semi": ("mnist-semi-100labels.toml", {}),
        "simclr-ft": ("mnist-simclr-100labels.toml", {}),
        "simclr-probe": ("mnist-simclr-100labels.toml", {"model.freeze_encoder": True, "model.probe_steps": 0}),
    }
    acc: dict[str, list[float]] = {m: [] for m in args.only}
    for draw in args.draw or range(args.draws):
        row = []
        for m in args.only:
            name, over = methods[m]
            over = {**over, **quick, "data.split_seed": draw}
            sets = []
            if name == "mnist-simclr-100labels.toml" and "model" not in over:
                over["model.init_from"] = str(pre)
                sets = args.set
            s = run(recipe(name, args.data, f"{m}-draw{draw}", over, sets), runs / f"{m}-draw{draw}")
            acc[m].append(s["test/acc"])
            row.append(f"{m} {100 * s['test/acc']:.2f} % ({s['wall_time_s']:.0f}s)")
        print(f"draw {draw}: " + ", ".join(row), flush=True)

    print(f"\n{args.data} test accuracy with 100 labels (10 per class), {len(args.draw or range(args.draws))} draws:")
    summary = {}
    for m, values in acc.items():
        mean = statistics.mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[m] = {"mean": mean, "sd": sd, "draws": values}
        gain = f", {100 * (mean - statistics.mean(acc['scratch'])):+.2f} points over scratch" \
            if "scratch" in acc and m != "scratch" else ""
        print(f"  {m:13s} {100 * mean:6.2f} % +- {100 * sd:.2f}  ({', '.join(f'{100 * v:.2f}' for v in values)}){gain}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
