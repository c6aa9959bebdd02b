"""AutoRec: an autoencoder recommender (Sedhain, Menon, Sanner & Xie, "AutoRec: Autoencoders Meet
Collaborative Filtering", WWW 2015), item-based (I-AutoRec, the better of the paper's two).

Each item is the vector of its training ratings over all users, r_i in R^U (0 where unrated). The
network reconstructs it through a narrow layer:  h = sigmoid(V r_i + mu),  r_hat_i = W h + b, and the
prediction for user u is component u of r_hat_i. Trained on the observed ratings only, its output at
the users who did not rate the item is the prediction.

Scores (user, item) pairs like the embedding models, so the `rating` task trains it on pairs: the
loss on pair (u, i) is the paper's masked loss restricted to that entry. Unlike the paper, the entry
being predicted is hidden from the input by default (r_i with r_ui set to 0, `hide_target`): in
training the network would otherwise learn to copy it through, which a held-out rating never allows. The rating matrix is not a
parameter: the task fills it from the training ratings with `set_ratings` (it is not saved in
checkpoints; the run's info rebuilds it). `penalty` is ||V||^2 + ||W||^2 per pair (the paper's
lambda / 2 regularisation, scaled by the task's `l2`). Index 0 (unseen user or item) scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS


@dataclass(frozen=True)
class AutoRecConfig:
    num_users: int = 1  # from the data set (index 0 = unseen)
    num_items: int = 1
    hidden: int = 500
    dropout: float = 0.0  # on the hidden layer
    hide_target: bool = True  # set r_ui to 0 in the input that predicts it (false: the paper's input)

    def __post_init__(self):
        check(self.num_users >= 1 and self.num_items >= 1, "[model] num_users / num_items",
              f"must be >= 1, got {self.num_users} / {self.num_items}")
        check(self.hidden >= 1, "[model] hidden", f"must be >= 1, got {self.hidden}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")


@MODELS.register("autorec")
class AutoRec(nn.Module):
    Config = AutoRecConfig

    def __init__(self, cfg: AutoRecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.num_users, cfg.hidden)  # V, mu
        self.decoder = nn.Linear(cfg.hidden, cfg.num_users)  # W, b
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("ratings", torch.zeros(cfg.num_items, cfg.num_users), persistent=False)  # (I, U)

    def set_ratings(self, user: torch.Tensor, item: torch.Tensor, rating: torch.Tensor) -> None:
        """The training ratings, as indices and values (N,), into the item-by-user matrix."""
        m = torch.zeros_like(self.ratings)
        m[item.to(m.device), user.to(m.device)] = rating.to(m)
        self.ratings.copy_(m)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        r = self.ratings[item]  # (B, U): each item's ratings over all users
        if self.cfg.hide_target:
            r = r.scatter(1, user[:, None], 0.0)  # hide r_ui itself
        h = self.drop(torch.sigmoid(self.encoder(r)))  # (B, hidden)
        out = (h * self.decoder.weight[user]).sum(-1) + self.decoder.bias[user]  # (B,): component u of W h + b
        return out * ((user > 0) & (item > 0)).float()

    def penalty(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) ||V||^2 + ||W||^2, the same for every pair."""
        return (self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()).expand(len(user))


# Presets (MovieLens 100K, u1 split: 944 user rows, 1,630 item rows): name -> (config, parameters)
PRESETS = {
    "autorec-500": (AutoRecConfig(num_users=944, num_items=1630, hidden=500), 945_444),
}
