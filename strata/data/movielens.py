"""MovieLens 100K: 100,000 ratings (1-5 stars) from 943 users on 1,682 movies, 1997-98 (GroupLens;
Harper & Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015).

Splits (`[data] split`):
- "u1" (rating prediction): the distributed u1.base / u1.test, the first of the five 80/20 folds, on
  which GC-MC (van den Berg et al. 2017) and later papers report test RMSE. `[data] val_fraction` of
  u1.base (seeded by split_seed) is held out for model selection; users and items are indexed on the
  rest, so a u1.test movie rated only in the held-out part counts as unseen.
- "leave_one_out" (ranking, He et al. 2017): by timestamp, each user's latest rating is the test item
  and the one before it the validation item; each is ranked among `negatives` (99) movies the user
  never rated, sampled once with split_seed. HR@10 and NDCG@10 follow from that rank.

Batches and `info` are described in strata/data/ratings.py; titles come from u.item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from strata.config import check
from strata.data import DATASETS
from strata.data.base import DataBundle
from strata.data.download import RemoteFile, fetch
from strata.data.ratings import RatingsSpec, Rows, leave_one_out, random_split, ratings_bundle
from strata.errors import DataError

NAME = "movielens_100k"
FILES = {
    "u.data": RemoteFile("movielens-100k/u.data",
                         "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", 1979173),
    "u.item": RemoteFile("movielens-100k/u.item",
                         "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", 236344),
    "u1.base": RemoteFile("movielens-100k/u1.base",
                          "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a", 1586544),
    "u1.test": RemoteFile("movielens-100k/u1.test",
                          "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950", 392629),
    "README": RemoteFile("movielens-100k/README",
                         "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52", 6750),
}


@dataclass(frozen=True)
class MovieLensConfig:
    split: Literal["u1", "leave_one_out"] = "u1"
    negatives: int = 99  # leave_one_out: sampled unrated movies ranked against each held-out one

    def __post_init__(self):
        check(1 <= self.negatives <= 1000, "[data] negatives", f"must be in [1, 1000], got {self.negatives}")


def read_ratings(name: str) -> Rows:
    """u.data / u1.base / u1.test: user <tab> item <tab> rating <tab> unix time, no header."""
    f = FILES[name]
    path = fetch(f.path, f.sha256, dataset=NAME)
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: expected four whole numbers per line (user, item, rating, time): {e}") from None
    return Rows(table[:, 0].astype(str), table[:, 1].astype(str), table[:, 2].astype(np.float64), table[:, 3])


def read_titles() -> dict[str, str]:
    """u.item: movie id | title | release date | ... (latin-1)."""
    f = FILES["u.item"]
    text = fetch(f.path, f.sha256, dataset=NAME).read_bytes().decode("latin-1")
    return {parts[0]: parts[1] for parts in (line.split("|") for line in text.splitlines()) if len(parts) > 1}


class MovieLens100K(RatingsSpec):
    Config = MovieLensConfig
    files = tuple(FILES.values())
    license = "GroupLens research license: no redistribution or commercial use; cite Harper & Konstan 2015"
    description = "MovieLens 100K: 100,000 movie ratings (1-5) from 943 users on 1,682 movies, with titles"
    splits = "u1: u1.base (val_fraction held out) / u1.test; leave_one_out: latest rating per user is test"

    def load(self, data_cfg, cfg: MovieLensConfig) -> DataBundle:
        titles = read_titles()
        if cfg.split == "u1":
            base, test = read_ratings("u1.base"), read_ratings("u1.test")
            train, val = random_split(base, data_cfg.val_fraction, data_cfg.split_seed)
            return ratings_bundle(train, val, test, titles, split="random", seed=data_cfg.split_seed)
        rows = read_ratings("u.data")
        train, val, test = leave_one_out(rows)
        return ratings_bundle(train, val, test, titles, split="leave_one_out", negatives=cfg.negatives,
                              seed=data_cfg.split_seed, everything=rows)


DATASETS.register(NAME, MovieLens100K())
