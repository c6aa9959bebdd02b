"""MovieLens 100K: strata's recommender recipes against classical peers, computed in the same run.

Rating prediction (u1 split): trains recipes/movielens-mf.toml, movielens-neumf.toml and
movielens-autorec.toml, then on the same training ratings (u1.base less the recipes' validation tenth)
and on u1.test: the global mean, the user/item-bias baseline (regularised alternating least squares,
as scikit-surprise's BaselineOnly), and scikit-surprise's SVD (Funk's matrix factorisation trained by
SGD, its default settings), also trained on all 80,000 ratings of u1.base as it is usually reported.
Prints test RMSE and MAE in stars and each RMSE over SVD's.

Ranking (leave-one-out, the NCF protocol of He et al. 2017): each user's latest rating is ranked among
99 movies the user never rated (sampled once, seeded). Trains recipes/movielens-neumf-ranking.toml and
movielens-mf-ranking.toml, then ranks the same candidates by popularity (the number of training
ratings) and at random (expected HR@10 = 0.1). Prints test HR@10 and NDCG@10 and each HR@10 over
popularity's.

    python benchmarks/movielens.py rating [--quick] [--refit]   # --quick: 2 epochs each
    python benchmarks/movielens.py ranking [--quick]

--refit: once a recipe has chosen its epochs on the validation tenth, train it again on all of u1.base
for that many epochs (val_fraction = 0) and report that model on u1.test too, as SVD's reference row
uses all of u1.base (the usual protocol: settings chosen on validation, then the whole training file).

scikit-surprise is optional (`pip install scikit-surprise`); without it the SVD rows are left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from strata.api import train
from strata.build import load_config
from strata.data import load_data
from strata.data.movielens import read_ratings
from strata.data.ratings import train_ratings
from strata.tasks.rating import bias_baseline

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"rating": ("movielens-mf", "movielens-neumf", "movielens-autorec"),
           "ranking": ("movielens-neumf-ranking", "movielens-mf-ranking")}
METRICS = {"rating": ("rmse", "mae"), "ranking": ("hr@10", "ndcg@10")}


def errors(pred: np.ndarray, y: np.ndarray) -> dict:
    pred = np.clip(pred, 1, 5)
    return {"rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "mae": float(np.mean(np.abs(pred - y)))}


def svd(train_rows: list[tuple[str, str, float]], test, seed: int = 0) -> dict:
    from surprise import SVD, Dataset, Reader

    trainset = Dataset(Reader(rating_scale=(1, 5))).construct_trainset([(u, i, r, None) for u, i, r in train_rows])
    algo = SVD(random_state=seed)
    algo.fit(trainset)
    pred = np.array([algo.predict(u, i).est for u, i in zip(test.user, test.item)])
    return errors(pred, test.rating)


def peers(info: dict, bundle) -> dict:
    rows = {}
    user, item, rating = train_ratings(info)
    t = bundle.test.tensors
    y = t["y"].double().numpy()
    rows["global mean"] = errors(np.full(len(y), float(rating.double().mean())), y)
    mu, bu, bi = bias_baseline(user, item, rating, info["num_users"], info["num_items"])
    rows["user/item biases"] = errors((mu + bu[t["user"]] + bi[t["item"]]).numpy(), y)
    try:
        import surprise  # noqa: F401
    except ImportError:
        print("scikit-surprise is not installed: no SVD rows")
        return rows
    test = read_ratings("u1.test")
    ids_u, ids_i = info["user_ids"], info["item_ids"]
    same = [(ids_u[u], ids_i[i], float(r)) for u, i, r in zip(user.tolist(), item.tolist(), rating.tolist())]
    rows["surprise SVD (same 72k ratings)"] = svd(same, test)
    base = read_ratings("u1.base")
    rows["surprise SVD (all of u1.base)"] = svd(list(zip(base.user, base.item, base.rating)), test)
    return rows


def rank_metrics(scores: torch.Tensor, k: int = 10) -> dict:
    """scores (U, 1 + K), the held-out item in column 0; ties count against it, as in the task."""
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1)
    hit = (rank < k).double()
    return {"hr@10": float(hit.mean()), "ndcg@10": float((hit / torch.log2(rank.double() + 2)).mean())}


def ranking_peers(info: dict, bundle) -> dict:
    items = bundle.test.tensors["items"]
    popularity = torch.tensor(info["popularity"], dtype=torch.float64)
    return {"popularity": rank_metrics(popularity[items]),
            "random": rank_metrics(torch.rand(items.shape, generator=torch.Generator().manual_seed(0)))}


def best_epoch(run_dir: Path, summary: dict) -> int:
    """The epoch whose validation gave the run's best monitored value."""
    from strata.run_folder import RunFolder

    key = next(k for k in summary if k.startswith("best_"))
    monitor, best = key.removeprefix("best_"), summary[key]
    return next(e["epoch"] for e in RunFolder(run_dir).read_metrics() if e.get("event") == "val"
                and e.get(monitor) == best)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["rating", "ranking"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "movielens")
    ap.add_argument("--only", nargs="*", help="recipes to train (default: all of the part's)")
    ap.add_argument("--refit", action="store_true", help="rating: retrain each recipe on all of u1.base for its "
                                                         "validated number of epochs")
    args = ap.parse_args(argv)
    quick = ["trainer.max_epochs=2"] if args.quick else []
    torch.set_num_threads(1)
    names, metrics = RECIPES[args.part], METRICS[args.part]
    rows = {}
    for name in args.only if args.only is not None else names:
        t0 = time.perf_counter()
        res = train(str(ROOT / "recipes" / f"{name}.toml"), overrides=quick, run_dir=args.run_dir / name)
        rows[name] = {**{m: res.summary[f"test/{m}"] for m in metrics}, "seconds": time.perf_counter() - t0}
        if args.refit and args.part == "rating":
            t0 = time.perf_counter()
            epochs = best_epoch(res.run_dir, res.summary)
            res = train(str(ROOT / "recipes" / f"{name}.toml"), run_dir=args.run_dir / f"{name}-all",
                        overrides=quick + ["data.val_fraction=0", f"trainer.max_epochs={epochs}"])
            rows[f"{name} (all of u1.base, {epochs} epochs)"] = {
                **{m: res.summary[f"test/{m}"] for m in metrics}, "seconds": time.perf_counter() - t0}
    bundle = load_data(load_config(ROOT / "recipes" / f"{names[0]}.toml").data)
    rows.update((peers if args.part == "rating" else ranking_peers)(bundle.info, bundle))
    ref_name = next(n for n in ("surprise SVD (all of u1.base)", "user/item biases", "popularity") if n in rows)
    ref, first = rows[ref_name], metrics[0]
    title = "MovieLens 100K, " + ("u1.test" if args.part == "rating" else "leave-one-out test")
    print(f"{title:34s} {first:>8s} {metrics[1]:>8s} {first + ' / ' + ref_name.split(' (')[0]:>28s}")
    for name, r in rows.items():
        print(f"{name:34s} {r[first]:8.4f} {r[metrics[1]]:8.4f} {r[first] / ref[first]:28.3f}"
              + (f"   ({r['seconds']:.0f} s)" if "seconds" in r else ""))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
