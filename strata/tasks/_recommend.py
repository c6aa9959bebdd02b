"""What the rating and ranking tasks share: a model over (user, item) pairs of a ratings data set, and
answering `strata predict RUN --user U [--item I] [--top N]`.

A request names a user by the data's own id. With an item, the answer is that pair's score; without,
the `top` items the user did not rate in training, best first, with their titles. A user the training
split never showed gets the most popular items (by training ratings) and a notice; an item id the
training split never showed is an error that says so.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from strata.data.ratings import rated_by_user, train_ratings
from strata.errors import StrataError
from strata.models import build_model
from strata.tasks.base import Task

SCORE_BATCH = 4096


def _index(ids: list[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(ids) if i > 0}


def _whole(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StrataError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


def recommend(request: dict, info: dict, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              key: str) -> dict:
    """score(user (N,), item (N,)) -> (N,) on the CPU; `key` names the score in the answer
    ("rating", "score"). Returns a JSON-able dict."""
    unknown = sorted(set(request) - {"user", "item", "top"})
    if unknown:
        raise StrataError(f"a recommendation request takes user, item and top; got {', '.join(unknown)}")
    if request.get("user") is None:
        raise StrataError("name the user: --user ID (Python: predict(user=ID)), with --item ID for one item's "
                          "score or --top N for the best items")
    user_id, item_id = str(request["user"]), request.get("item")
    top = _whole(request.get("top", 10), "--top")
    users, items = _index(info["user_ids"]), _index(info["item_ids"])
    titles = info.get("titles") or [""] * len(info["item_ids"])
    u = users.get(user_id, 0)
    out: dict = {"user": user_id}
    if not u:
        out["notice"] = (f"user '{user_id}' is not in the training data; "
                         + ("their score uses no user vector" if item_id is not None else
                            "recommending the most popular items"))
    if item_id is not None:
        i = items.get(str(item_id), 0)
        if not i:
            some = ", ".join(info["item_ids"][1:6])
            raise StrataError(f"item '{item_id}' is not in the training data ({len(items):,} known items, ids such "
                              f"as {some}); use an id from the ratings the run was trained on")
        s = score(torch.tensor([u]), torch.tensor([i]))
        return {**out, "item": str(item_id), "title": titles[i], key: round(float(s[0]), 4)}
    n = len(info["item_ids"])
    candidates = np.arange(1, n)
    if u:
        rated = rated_by_user(info)[u]
        candidates = np.setdiff1d(candidates, rated)
        scores = torch.cat([score(torch.full((len(c),), u), torch.from_numpy(c))
                            for c in np.array_split(candidates, max(1, len(candidates) // SCORE_BATCH))])
        order = torch.argsort(scores, descending=True, stable=True)[:top].numpy()
        ranked = [(int(candidates[j]), float(scores[j])) for j in order]
    else:
        pop = np.asarray(info["popularity"])[candidates]
        order = np.argsort(-pop, kind="stable")[:top]
        ranked = [(int(candidates[j]), None) for j in order]
    rows = []
    for i, s in ranked:
        row = {"item": info["item_ids"][i], "title": titles[i]}
        row.update({key: round(s, 4)} if s is not None else {"ratings_in_training": int(info["popularity"][i])})
        rows.append(row)
    return {**out, "top": rows}


def as_text(answer: dict) -> str:
    """The answer as lines for a terminal: one item's score, or a numbered list."""
    key = next((k for k in ("rating", "score") if k in answer), None)
    if key:
        return f"user {answer['user']}, item {answer['item']} ({answer['title'] or 'no title'}): {key} {answer[key]}"
    lines = [f"top {len(answer['top'])} for user {answer['user']}:"]
    for n, row in enumerate(answer["top"], 1):
        value = next((f"{k} {row[k]}" for k in ("rating", "score", "ratings_in_training") if k in row), "")
        lines.append(f"{n:3d}. {row['item']:>8}  {value:<26} {row['title']}")
    return "\n".join(lines)


class PairTask(Task):
    """A task whose model scores (user, item) index pairs of a ratings data set split `split`. It hands
    the model the training ratings when the model reads them (`set_ratings`: autorec), and answers
    recommendation requests with `score` under the name `score_key`."""

    name = ""
    split = ""
    score_key = "score"
    input_key = "user"
    export_refusal = ("a recommender answers from user and item ids through the rating table kept in the run "
                      "folder (the items a user already rated), which is no part of a graph; use `strata predict "
                      "RUN_DIR --user U` or `strata serve`")

    def __init__(self, cfg, model, info: dict):
        super().__init__(cfg, model, info)
        if info.get("kind") != "ratings":
            raise StrataError(f"task '{self.name}' learns from ratings; use [data] name = \"movielens_100k\" or "
                              "\"ratings\" (your own CSV of user, item, rating)")
        if info.get("split") != self.split:
            movielens = "u1" if self.split == "random" else self.split
            raise StrataError(f"task '{self.name}' needs [data] split = \"{movielens}\" (\"{self.split}\" for "
                              f"[data] name = \"ratings\"); this data is split '{info.get('split')}'")
        self.model = build_model(model, **info)
        if hasattr(self.model, "set_ratings"):  # a model that reads the rating matrix
            self.model.set_ratings(*train_ratings(info))

    def score(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) what a recommendation reports for each pair."""
        raise NotImplementedError

    @torch.no_grad()
    def recommend(self, request: dict, run_dir) -> dict:
        device = next(self.parameters()).device
        return recommend(request, self.info, lambda u, i: self.score(u.to(device), i.to(device)).cpu(),
                         self.score_key)
