"""KDD Cup 1999 anomaly detection: an autoencoder trained on normal connections, against PCA.

Trains recipes/kdd-autoencoder.toml (normal rows of the 10% training file), scores the corrected
test file by reconstruction error, and prints AUROC and precision/recall at a 1% false-positive
rate. The peer, computed in the same run on the same features and splits: PCA with as many
components as the autoencoder's code, scored by its own reconstruction error (scikit-learn).

    python benchmarks/anomaly_kdd.py             # full recipe: 45 s measured (one core, 2026-11-22)
    python benchmarks/anomaly_kdd.py --quick     # 20,000 training rows, 2 epochs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from strata.api import train
from strata.build import load_config
from strata.data import load_data
from strata.tasks.reconstruct import auroc, normal_quantile, rates_at

ROOT = Path(__file__).resolve().parent.parent


def pca_scores(train_x: np.ndarray, val_x, val_y, test_x, test_y, k: int, fpr: float) -> dict:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=0).fit(train_x)

    def score(x):
        return torch.from_numpy(((pca.inverse_transform(pca.transform(x)) - x) ** 2).mean(1))

    sv, st = score(val_x), score(test_x)
    thr = normal_quantile(sv[~val_y], 1 - fpr)  # threshold chosen on validation, like the task
    test_y = torch.from_numpy(test_y)
    own = rates_at(st, test_y, normal_quantile(st[~test_y], 1 - fpr))
    saved = rates_at(st, test_y, thr)
    return {"auroc": auroc(st, test_y), "precision_at_fpr": own["precision"], "recall_at_fpr": own["recall"],
            "precision_at_threshold": saved["precision"], "recall_at_threshold": saved["recall"],
            "fpr_at_threshold": saved["fpr"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "kdd-autoencoder")
    args = ap.parse_args(argv)
    recipe = ROOT / "recipes" / "kdd-autoencoder.toml"
    overrides = ["data.limit=20000", "trainer.max_epochs=2"] if args.quick else []
    res = train(recipe, overrides=overrides, run_dir=args.run_dir)
    s = res.summary
    pct = "1"
    ae = {"auroc": s["test/auroc"], "precision_at_fpr": s[f"test/precision_at_{pct}fpr"],
          "recall_at_fpr": s[f"test/recall_at_{pct}fpr"], "precision_at_threshold": s["test/precision_at_threshold"],
          "recall_at_threshold": s["test/recall_at_threshold"], "fpr_at_threshold": s["test/fpr_at_threshold"]}

    cfg = load_config(recipe, overrides)
    bundle = load_data(cfg.data)
    t = {k: getattr(bundle, k).tensors for k in ("train", "val", "test")}
    pca = pca_scores(t["train"]["x"].numpy(), t["val"]["x"].numpy(), t["val"]["anomaly"].bool(),
                     t["test"]["x"].numpy(), t["test"]["anomaly"].bool().numpy(), cfg.model.options.get("latent", 8),
                     cfg.task.options.get("target_fpr", 0.01))
    print(f"{'KDD Cup 99 corrected test':28s} {'autoencoder':>12s} {'PCA':>8s} {'ratio':>7s}")
    for k in ae:
        print(f"{k:28s} {ae[k]:12.4f} {pca[k]:8.4f} {ae[k] / pca[k] if pca[k] else float('nan'):7.3f}")
    print(f"autoencoder wall time {s['wall_time_s']:.0f}s on {s['device']}")
    out = {"autoencoder": ae, "pca": pca}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
