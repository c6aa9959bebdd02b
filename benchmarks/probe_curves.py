"""Layer-wise linear probes of trained runs (Alain & Bengio 2016): the test accuracy of a logistic
regression on each stage's pooled features, layer 0 = the raw input, printed as a Markdown table
(the rows of BENCHMARKS.md, "The hierarchy of features"). Each run's pictures and features.json go
to RUN_DIR/features, as `strata features RUN_DIR` writes them.

    python benchmarks/probe_curves.py runs/mnist-cnn runs/fashion-cnn       # 5,000 train / 2,000 test
    python benchmarks/probe_curves.py runs/mnist-lenet5 --probe-examples 1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from strata.explain.features import features_run
from strata.run_folder import RunFolder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--probe-examples", type=int, default=5000)
    a = p.parse_args()
    rows = []
    for run_dir in a.runs:
        t0 = time.perf_counter()
        out = features_run(run_dir, probe_examples=a.probe_examples)
        summary = RunFolder(run_dir).read_summary() or {}
        curve = out["probe"]
        rows.append({"run": run_dir, "test_acc": summary.get("test/acc"), "epochs": summary.get("epochs"),
                     "curve": curve["layers"], "train_examples": curve["train_examples"],
                     "test_examples": curve["test_examples"], "probe_seconds": curve["seconds"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    for r in rows:
        acc = f", the network's own test accuracy {r['test_acc']:.2%}" if r["test_acc"] is not None else ""
        print(f"`{r['run']}`{acc}; probes on {r['train_examples']:,} train / {r['test_examples']:,} test examples, "
              f"{r['probe_seconds']:.0f} s ({r['seconds']:.0f} s with the pictures)\n")
        print("| layer | stage | features | probe test accuracy |\n|---|---|---|---|")
        for i, layer in enumerate(r["curve"]):
            print(f"| {i} | `{layer['layer']}` ({layer['kind']}) | {layer['features']:,} | {layer['test_acc']:.2%} |")
        print()


if __name__ == "__main__":
    main()
