"""Ratings: who rated what, and how much. Any CSV of user, item, rating (and optionally timestamp)
columns, with ids of any type, and an optional file of item titles.

Users and items are indexed on the training split only: index 0 stands for a user or item the
training split never showed (the models give it no learned vector), 1..N for the known ones in order
of first appearance. The raw ids, the titles and each item's training popularity are in `info`, so
`strata predict RUN --user 42` speaks in the data's own ids; so are the training ratings themselves
(info["train_ratings"], compressed: `train_ratings(info)` reads them), so a recommendation leaves out
what a user already rated and an autoencoder recommender rebuilds its rating matrix without the data.

Two splits:
- "random" (rating prediction): a seeded `test_fraction` of the rows is the test split, then
  `[data] val_fraction` of the rest the validation split.
  Batches: {"user": (B,) int64, "item": (B,) int64, "y": (B,) float32 rating}.
- "leave_one_out" (ranking, the NCF protocol of He et al. 2017): by timestamp, each user's latest
  rating is the test item and the one before it the validation item; the rest train. Every held-out
  item is ranked against `negatives` items the user never rated (in any split), sampled once with
  `split_seed`. Batches of val / test: {"user": (B,), "items": (B, 1 + negatives)}, the held-out item
  in column 0. Training batches are the rated pairs, as above.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from strata.config import check
from strata.data import DATASETS
from strata.data.base import DataBundle, DatasetSpec, TensorSplit
from strata.data.tables import read_csv
from strata.errors import DataError



@dataclass
class Rows:
    """Ratings as parallel arrays: raw user and item ids (strings), ratings, timestamps (or None)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "Rows":
        return Rows(self.user[idx], self.item[idx], self.rating[idx], None if self.time is None else self.time[idx])

    def __len__(self) -> int:
        return len(self.user)


def random_split(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """(kept, held): a seeded `fraction` of the rows held out."""
    order = np.random.default_rng(seed).permutation(len(rows))
    k = int(round(fraction * len(rows)))
    return rows.take(np.sort(order[k:])), rows.take(np.sort(order[:k]))


def leave_one_out(rows: Rows) -> tuple[Rows, Rows, Rows]:
    """(train, val, test): each user's latest rating is test, the one before it val (users with fewer
    than 3 ratings keep them all in training). Ties in time keep the file's order."""
    if rows.time is None:
        raise DataError("split = \"leave_one_out\" needs a timestamp column; name it with [data] timestamp")
    order = np.lexsort((np.arange(len(rows)), rows.time, rows.user))  # by user, then time, then file order
    users = rows.user[order]
    last = np.r_[users[1:] != users[:-1], True]  # the last row of each user's run
    second = np.r_[last[1:], False] & ~last
    first_of_user = np.r_[True, users[1:] != users[:-1]]
    # a user with < 3 ratings: keep everything in training
    run_start = np.maximum.accumulate(np.where(first_of_user, np.arange(len(users)), 0))
    run_len = np.bincount(run_start, minlength=len(users))[run_start]
    enough = run_len >= 3
    test, val = last & enough, second & enough
    return rows.take(order[~(test | val)]), rows.take(order[val]), rows.take(order[test])


def index_ids(ids: np.ndarray) -> dict[str, int]:
    """Raw id -> 1..N in order of first appearance (0 is 'unseen in training')."""
    index: dict[str, int] = {}
    for v in ids:
        if v not in index:
            index[v] = len(index) + 1
    return index


def encode_ids(ids, index: dict[str, int]) -> np.ndarray:
    return np.array([index.get(str(v), 0) for v in ids], dtype=np.int64)


def sample_negatives(rated: list[set[int]], users: np.ndarray, num_items: int, k: int, seed: int) -> np.ndarray:
    """(len(users), k) known item indices (1..num_items-1) that each user never rated, seeded."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(users), k), dtype=np.int64)
    for row, u in enumerate(users):
        seen = rated[u]
        if num_items - 1 - sum(1 for j in seen if j > 0) < k:
            raise DataError(f"user index {u} rated all but fewer than {k} items; lower [data] negatives")
        picked: list[int] = []
        chosen: set[int] = set()
        while len(picked) < k:
            for j in rng.integers(1, num_items, size=2 * k):
                j = int(j)
                if j not in seen and j not in chosen:
                    picked.append(j)
                    chosen.add(j)
                    if len(picked) == k:
                        break
        out[row] = picked
    return out


def ratings_bundle(train: Rows, val: Rows | None, test: Rows | None, titles: dict[str, str], *,
                   split: str, negatives: int = 99, seed: int = 0, everything: Rows | None = None) -> DataBundle:
    """Index users and items on `train`, encode the splits, and gather the facts predict needs.
    `everything`: all rows (for leave-one-out, whose sampled negatives avoid every rated item)."""
    if len(train) == 0:
        raise DataError("the training split has no ratings")
    lo, hi = float(train.rating.min()), float(train.rating.max())
    for name, rows in (("validation", val), ("test", test)):
        outside = np.flatnonzero((rows.rating < lo) | (rows.rating > hi)) if rows is not None and len(rows) else []
        if len(outside):
            i = int(outside[0])
            raise DataError(f"{len(outside):,} {name} ratings lie outside the training ratings' scale {lo:g}..{hi:g} "
                            f"(the first: user {rows.user[i]}, item {rows.item[i]}, rating {rows.rating[i]:g}); "
                            "put every rating on one scale before training")
    users, items = index_ids(train.user), index_ids(train.item)
    nu, ni = len(users) + 1, len(items) + 1
    tu, ti = encode_ids(train.user, users), encode_ids(train.item, items)
    popularity = np.bincount(ti, minlength=ni)
    item_ids = [""] + list(items)
    info = {
        "kind": "ratings", "split": split, "num_users": nu, "num_items": ni,
        "rating_mean": float(train.rating.mean()),
        "rating_min": float(train.rating.min()), "rating_max": float(train.rating.max()),
        "user_ids": [""] + list(users), "item_ids": item_ids,
        "titles": [titles.get(i, "") for i in item_ids],
        "popularity": popularity.tolist(),
    }

    def pairs(rows: Rows | None):
        if rows is None or not len(rows):
            return None
        return TensorSplit({"user": torch.from_numpy(encode_ids(rows.user, users)),
                            "item": torch.from_numpy(encode_ids(rows.item, items)),
                            "y": torch.from_numpy(rows.rating.astype(np.float32))})

    if split == "leave_one_out":
        every = everything if everything is not None else train
        rated: list[set[int]] = [set() for _ in range(nu)]
        for u, i in zip(encode_ids(every.user, users), encode_ids(every.item, items)):
            rated[u].add(int(i))

        def ranked(rows: Rows | None, salt: int):
            if rows is None or not len(rows):
                return None
            u = encode_ids(rows.user, users)
            neg = sample_negatives(rated, u, ni, negatives, seed + salt)
            pos = encode_ids(rows.item, items)[:, None]
            return TensorSplit({"user": torch.from_numpy(u), "items": torch.from_numpy(np.hstack([pos, neg]))})

        val_split, test_split = ranked(val, 1), ranked(test, 2)
        info["negatives"] = negatives
    else:
        val_split, test_split = pairs(val), pairs(test)
    buf = io.BytesIO()
    np.savez_compressed(buf, user=tu.astype(np.int32), item=ti.astype(np.int32),
                        rating=train.rating.astype(np.float32))
    info["train_ratings"] = base64.b64encode(buf.getvalue()).decode("ascii")  # npz: user, item, rating
    return DataBundle(train=pairs(train), val=val_split, test=test_split, info=info)


def train_ratings(info: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training split's (user, item, rating) tensors, as indexed, from a ratings data set's info."""
    if "train_ratings" not in info:
        raise DataError("this run's info.json has no training ratings (train_ratings); train the run again")
    with np.load(io.BytesIO(base64.b64decode(info["train_ratings"]))) as z:
        return (torch.from_numpy(z["user"].astype(np.int64)), torch.from_numpy(z["item"].astype(np.int64)),
                torch.from_numpy(z["rating"]))


def rated_by_user(info: dict) -> list[np.ndarray]:
    """Per user index, the item indices that user rated in training."""
    user, item, _ = (t.numpy() for t in train_ratings(info))
    order = np.argsort(user, kind="stable")
    bounds = np.searchsorted(user[order], np.arange(info["num_users"] + 1))
    return [item[order[bounds[u]:bounds[u + 1]]] for u in range(info["num_users"])]


class RatingsSpec(DatasetSpec):
    """A data set of ratings: its runs predict for a user by id, not from input files."""

    def encode_inputs(self, inputs, info, run_dir):
        raise DataError(f"a ratings run predicts for a user, not from inputs ({' '.join(inputs)}): "
                        "strata predict RUN_DIR --user ID [--item ID | --top N]")


# ---------------------------------------------------------------------------------------------
# Your own ratings file


@dataclass(frozen=True)
class RatingsConfig:
    path: str = ""  # the CSV file (.csv, .tsv or .gz), with a header row
    user: str = "user"  # column names
    item: str = "item"
    rating: str = "rating"
    timestamp: str = ""  # needed by split = "leave_one_out"
    titles: str = ""  # optional CSV of item id and title: two columns, with a header row
    delimiter: str = ","
    split: Literal["random", "leave_one_out"] = "random"
    test_fraction: float = 0.2  # split = "random"
    negatives: int = 99  # split = "leave_one_out": sampled unrated items ranked against each held-out one

    def __post_init__(self):
        check(bool(self.path), "[data] path", "missing: the CSV file of ratings to read")
        check(len(self.delimiter) == 1, "[data] delimiter", f"must be one character, got {self.delimiter!r}")
        check(0 < self.test_fraction < 1, "[data] test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        check(self.negatives >= 1, "[data] negatives", f"must be >= 1, got {self.negatives}")


def _numbers(col: np.ndarray, what: str, path) -> np.ndarray:
    try:
        return col.astype(np.float64)
    except ValueError:
        bad = next(v for v in col if not _is_number(v))
        raise DataError(f"{path}: column '{what}' must hold numbers, got {bad!r}") from None


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


class RatingsCsv(RatingsSpec):
    Config = RatingsConfig
    license = "yours"
    description = "Your own ratings: a CSV of user, item, rating (and timestamp) columns, optional titles"
    splits = "random test_fraction, then val_fraction; or leave_one_out by timestamp"

    def load(self, data_cfg, cfg: RatingsConfig) -> DataBundle:
        path = Path(cfg.path).expanduser()
        cols = read_csv(path, cfg.delimiter)
        wanted = [cfg.user, cfg.item, cfg.rating] + ([cfg.timestamp] if cfg.timestamp else [])
        for name in wanted:
            if name not in cols:
                from strata.registry import closest

                raise DataError(f"{path} has no column '{name}'{closest(name, cols)}; columns: {', '.join(cols)}; "
                                "name the columns with [data] user / item / rating / timestamp")
        rating = _numbers(cols[cfg.rating], cfg.rating, path)
        if not np.isfinite(rating).all():
            raise DataError(f"{path}: column '{cfg.rating}' holds a value that is not a finite number")
        rows = Rows(cols[cfg.user].astype(str), cols[cfg.item].astype(str), rating,
                    _numbers(cols[cfg.timestamp], cfg.timestamp, path) if cfg.timestamp else None)
        titles = {}
        if cfg.titles:
            t = read_csv(Path(cfg.titles).expanduser(), cfg.delimiter)
            if len(t) < 2:
                raise DataError(f"{cfg.titles}: expected two columns, item id and title")
            ids, names = list(t.values())[:2]
            titles = dict(zip(ids.astype(str), names.astype(str)))
        if cfg.split == "leave_one_out":
            train, val, test = leave_one_out(rows)
        else:
            rest, test = random_split(rows, cfg.test_fraction, data_cfg.split_seed)
            train, val = random_split(rest, data_cfg.val_fraction, data_cfg.split_seed + 1)
        return ratings_bundle(train, val, test, titles, split=cfg.split, negatives=cfg.negatives,
                              seed=data_cfg.split_seed, everything=rows)


DATASETS.register("ratings", RatingsCsv())
