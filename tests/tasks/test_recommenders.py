"""Recommenders on the real MovieLens 100K: the splits keep held-out ratings out of training, short
trainings beat the user/item-bias baseline, and `strata predict --user` agrees with Python."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import strata
from strata.api import train
from strata.build import data_config
from strata.cli import main
from strata.data import load_data
from strata.data.ratings import rated_by_user, train_ratings
from strata.errors import DataError, StrataError
from strata.tasks.rating import bias_baseline


def movielens(split="u1", **extra):
    return load_data(data_config({"name": "movielens_100k", "split": split, **extra}))


def u_data(mirror) -> np.ndarray:
    return np.loadtxt(Path(mirror) / "movielens-100k" / "u.data", dtype=np.int64)  # user, item, rating, time


def config(model: dict, epochs: int, **task) -> dict:
    return {"name": "ml-test", "data": {"name": "movielens_100k", "batch_size": 256},
            "model": model, "task": {"name": "rating", **task},
            "optimizer": {"name": "adam", "lr": 0.003}, "schedule": {"name": "constant"},
            "trainer": {"max_epochs": epochs, "seed": 0, "monitor": "val/rmse", "mode": "min", "progress": "off",
                        "sanity_val_batches": 0}}


def bias_rmse(bundle) -> float:
    info, t = bundle.info, bundle.test.tensors
    mu, bu, bi = bias_baseline(*train_ratings(info), info["num_users"], info["num_items"])
    pred = (mu + bu[t["user"]] + bi[t["item"]]).clamp(1, 5)
    return float((pred - t["y"].double()).pow(2).mean().sqrt())


def test_u1_split_indexes_users_and_items_on_training_ratings_only(mirror):
    b = movielens()
    assert (len(b.train), len(b.val), len(b.test)) == (72_000, 8_000, 20_000)  # u1.base = 80,000, a tenth held out
    train_items = set(b.info["item_ids"][i] for i in b.train.tensors["item"].tolist())
    assert len(train_items) == b.info["num_items"] - 1 and 0 not in b.train.tensors["item"].tolist()
    unseen = b.test.tensors["item"] == 0  # u1.test movies nobody rated in the training part
    assert 0 < int(unseen.sum()) < 200
    assert b.info["titles"][b.info["item_ids"].index("50")] == "Star Wars (1977)"


def test_leave_one_out_holds_out_each_users_latest_rating_and_never_trains_on_it(mirror):
    b = movielens("leave_one_out")
    raw = u_data(mirror)
    info = b.info
    ids_u, ids_i = np.array(info["user_ids"]), np.array(info["item_ids"])
    train_pairs = {(ids_u[u], ids_i[i]) for u, i in zip(*(t.tolist() for t in train_ratings(info)[:2]))}
    latest = {}
    for u, i, _, t in raw[np.lexsort((np.arange(len(raw)), raw[:, 3]))]:
        latest[str(u)] = str(i)  # the last one by time wins
    for split in (b.test, b.val):
        users = ids_u[split.tensors["user"].numpy()]
        items = ids_i[split.tensors["items"][:, 0].numpy()]
        assert len(users) == 943
        assert not {(u, i) for u, i in zip(users, items)} & train_pairs  # the held-out item is never trained on
    test_items = dict(zip(ids_u[b.test.tensors["user"].numpy()], ids_i[b.test.tensors["items"][:, 0].numpy()]))
    unseen = {u for u, i in test_items.items() if i == ""}  # a latest movie nobody rated before: index 0
    assert len(unseen) <= 5
    assert {u: i for u, i in test_items.items() if u not in unseen} == {u: i for u, i in latest.items()
                                                                        if u not in unseen}
    assert len(b.train) == 100_000 - 2 * 943


def test_sampled_negatives_are_never_rated_by_the_user_and_are_seeded(mirror):
    b = movielens("leave_one_out")
    raw = u_data(mirror)
    ids_u, ids_i = b.info["user_ids"], b.info["item_ids"]
    rated: dict[str, set[str]] = {}
    for u, i in raw[:, :2]:
        rated.setdefault(str(u), set()).add(str(i))
    for split in (b.val, b.test):
        for u, row in zip(split.tensors["user"].tolist(), split.tensors["items"].tolist()):
            negatives = row[1:]
            assert len(negatives) == 99 == len(set(negatives)) and 0 not in negatives
            assert not {ids_i[j] for j in negatives} & rated[ids_u[u]]
    assert torch.equal(movielens("leave_one_out").test.tensors["items"], b.test.tensors["items"])
    assert not torch.equal(movielens("leave_one_out", split_seed=1).test.tensors["items"], b.test.tensors["items"])


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory):
    from conftest import mirror_location

    where = mirror_location()
    if where is None:
        pytest.skip("no data mirror")
    mp = pytest.MonkeyPatch()
    mp.setenv("STRATA_DATA_MIRROR", where)
    mp.setenv("STRATA_HOME", str(tmp_path_factory.mktemp("strata_home")))
    run_dir = tmp_path_factory.mktemp("mf") / "run"
    res = train(config({"name": "mf", "dim": 32}, 3, l2=0.1), run_dir=run_dir)
    yield run_dir, res.summary, bias_rmse(movielens())
    mp.undo()


def test_short_mf_training_beats_the_bias_baseline_by_0_02(mf_run):
    _, summary, baseline = mf_run
    assert 0.95 < baseline < 0.97  # the user/item-bias baseline on u1.test
    assert summary["test/rmse"] < baseline - 0.02, (summary["test/rmse"], baseline)


@pytest.mark.parametrize("model,epochs,l2", [({"name": "neumf", "gmf_dim": 16, "mlp_dims": [32, 16]}, 3, 0.1),
                                             ({"name": "autorec", "hidden": 100}, 2, 1e-4)])
def test_short_neumf_and_autorec_trainings_beat_the_bias_baseline(mirror, tmp_path, model, epochs, l2):
    res = train(config(model, epochs, l2=l2), run_dir=tmp_path / "run")
    assert res.summary["test/rmse"] < bias_rmse(movielens()) - 0.01, res.summary["test/rmse"]


def _cli_json(capsys, *argv) -> tuple[int, dict | str]:
    code = main(["predict", *map(str, argv), "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_cli_and_python_recommendations_agree(mf_run, capsys):
    run_dir = mf_run[0]
    run = strata.load(run_dir)
    code, top = _cli_json(capsys, run_dir, "--user", 42, "--top", 5)
    assert code == 0 and top == run.predict(user=42, top=5)
    assert len(top["top"]) == 5 and all(r["title"] for r in top["top"])
    seen = {run.info["item_ids"][i] for i in rated_by_user(run.info)[run.info["user_ids"].index("42")]}
    assert not seen & {r["item"] for r in top["top"]}  # only items the user has not rated
    code, one = _cli_json(capsys, run_dir, "--user", 42, "--item", 50)
    assert code == 0 and one == run.predict(user="42", item="50")
    assert one["title"] == "Star Wars (1977)" and 1 <= one["rating"] <= 5


def test_unseen_user_gets_popular_items_with_a_notice_and_unknown_item_is_an_error(mf_run, capsys):
    run_dir = mf_run[0]
    code, out = _cli_json(capsys, run_dir, "--user", "nobody", "--top", 3)
    assert code == 0 and "not in the training data" in out["notice"]
    assert [r["item"] for r in out["top"]] == ["50", "181", "258"]  # the most rated movies of u1.base
    code, err = _cli_json(capsys, run_dir, "--user", 42, "--item", 99999)
    assert code == 2 and "item '99999' is not in the training data" in err
    with pytest.raises(StrataError, match="item 'x' is not in the training data"):
        strata.load(run_dir).predict(user=42, item="x")


def test_own_ratings_csv_with_string_ids_titles_and_unseen_ids(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["who,what,stars,when"] + [f"u{u},m{(u * 7 + k) % 40},{rng.integers(1, 6)},{k}"
                                      for u in range(30) for k in range(12)]
    (tmp_path / "r.csv").write_text("\n".join(rows))
    (tmp_path / "t.csv").write_text("id,title\n" + "\n".join(f"m{i},Movie {i}" for i in range(40)))
    data = {"name": "ratings", "path": str(tmp_path / "r.csv"), "user": "who", "item": "what", "rating": "stars",
            "timestamp": "when", "titles": str(tmp_path / "t.csv")}
    b = load_data(data_config(data))
    assert b.info["titles"][1].startswith("Movie ") and len(b.train) + len(b.val) + len(b.test) == 360
    loo = load_data(data_config({**data, "split": "leave_one_out", "negatives": 5}))
    assert len(loo.test) == 30 and loo.test.tensors["items"].shape == (30, 6)
    with pytest.raises(DataError, match="needs a timestamp column"):
        load_data(data_config({**data, "timestamp": "", "split": "leave_one_out"}))
    with pytest.raises(DataError, match="no column 'stras'"):
        load_data(data_config({**data, "rating": "stras"}))
    # a rating off the training scale (1..5 here) among the held-out rows is refused, naming it
    (tmp_path / "r.csv").write_text("\n".join(rows[:-1] + ["u29,m3,50,99"]))
    with pytest.raises(DataError, match=r"outside the training ratings' scale 1\.\.5 .*rating 50"):
        load_data(data_config({**data, "split": "leave_one_out", "negatives": 5}))


def test_short_ranking_training_beats_popularity_and_recommends_unrated_items(mirror, tmp_path, capsys):
    cfg = config({"name": "neumf", "gmf_dim": 16, "mlp_dims": [32, 16]}, 2)
    cfg.update(data={"name": "movielens_100k", "split": "leave_one_out", "batch_size": 512},
               task={"name": "ranking", "negatives": 4},
               trainer={**cfg["trainer"], "monitor": "val/hr@10", "mode": "max"})
    res = train(cfg, run_dir=tmp_path / "run")
    b = movielens("leave_one_out")
    items = b.test.tensors["items"]
    pop = torch.tensor(b.info["popularity"], dtype=torch.float64)[items]
    pop_hr = float(((pop[:, 1:] >= pop[:, :1]).sum(1) < 10).double().mean())
    assert res.summary["test/hr@10"] > pop_hr + 0.05, (res.summary["test/hr@10"], pop_hr)
    code, top = _cli_json(capsys, tmp_path / "run", "--user", 1, "--top", 3)
    assert code == 0 and top == strata.load(tmp_path / "run").predict(user=1, top=3)
    assert all(0 < r["score"] < 1 for r in top["top"])


def test_tasks_name_the_split_they_need(mirror, tmp_path):
    cfg = config({"name": "mf", "dim": 4}, 1)
    cfg["data"]["split"] = "leave_one_out"
    with pytest.raises(StrataError, match="task 'rating' needs \\[data\\] split = \"u1\""):
        train(cfg, run_dir=tmp_path / "run")
