"""Rating prediction: learn a user's rating of an item from the ratings of everyone (explicit
feedback; the Netflix-prize setting).

Batches: {"user": (B,), "item": (B,) indices, "y": (B,) ratings}. The prediction is
r_hat = mu + f(u, i), with mu the training split's mean rating and f the model's score (`mf`,
`neumf`, `autorec`), so an untrained model predicts mu. Loss: squared error plus `l2` times each pair's
squared parameter norm (Koren et al. 2009). Reported, in stars: rmse and mae, with predictions
clipped to the training split's rating range (a prediction of 5.3 stars is 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strata.config import check
from strata.tasks import TASKS
from strata.tasks._recommend import PairTask


@dataclass(frozen=True)
class RatingConfig:
    l2: float = 0.0  # weight of each pair's squared parameter norm in the loss
    clip: bool = True  # clip predictions to the training ratings' range

    def __post_init__(self):
        check(self.l2 >= 0, "[task] l2", f"must be >= 0, got {self.l2}")


@TASKS.register("rating")
class Rating(PairTask):
    Config = RatingConfig
    name, split, score_key = "rating", "random", "rating"

    def __init__(self, cfg: RatingConfig, model, info: dict):
        super().__init__(cfg, model, info)
        self.register_buffer("mu", torch.tensor(float(info["rating_mean"])))
        self.lo, self.hi = float(info["rating_min"]), float(info["rating_max"])
        self._sums: torch.Tensor | None = None

    def forward(self, user: torch.Tensor, item: torch.Tensor, clip: bool | None = None) -> torch.Tensor:
        """(B,) predicted ratings."""
        r = self.mu + self.model(user, item).float()  # r_hat = mu + f(u, i)
        return r.clamp(self.lo, self.hi) if (self.cfg.clip if clip is None else clip) else r

    def training_step(self, batch):
        pred = self(batch["user"], batch["item"], clip=False)
        mse = F.mse_loss(pred, batch["y"].float())
        if not self.cfg.l2:
            return mse
        return mse + self.cfg.l2 * self.model.penalty(batch["user"], batch["item"]).mean()

    # --- evaluation --------------------------------------------------------------------------
    def validation_start(self) -> None:
        self._sums = None

    def validation_step(self, batch):
        err = self(batch["user"], batch["item"]) - batch["y"].float()
        n = len(err)
        sums = torch.stack([err.pow(2).sum(), err.new_tensor(n)]).double()
        self._sums = sums if self._sums is None else self._sums + sums
        return {"loss": (err.pow(2).sum(), n), "mae": (err.abs().sum(), n)}

    def validation_end(self) -> dict[str, float]:
        local = self._sums if self._sums is not None else torch.zeros(2, dtype=torch.float64)
        sse, n = self.gather(local.cpu()[None]).sum(0)
        self._sums = None
        return {"rmse": float((sse / n).sqrt())} if n > 0 else {}

    # --- use ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_step(self, batch):
        pred = self(batch["user"], batch["item"]).cpu()
        return [{"rating": round(float(v), 4)} for v in pred]

    def score(self, user, item):
        return self(user, item)


def bias_baseline(user: torch.Tensor, item: torch.Tensor, rating: torch.Tensor, num_users: int, num_items: int,
                  reg_u: float = 15.0, reg_i: float = 10.0, sweeps: int = 10) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The user/item-bias baseline r_hat = mu + b_u + b_i (Koren, "Factor in the Neighbors", TKDD 2010),
    fitted by alternating regularised least squares (scikit-surprise's BaselineOnly, same defaults):
    b_u = sum(r - mu - b_i) / (reg_u + n_u), then b_i = sum(r - mu - b_u) / (reg_i + n_i).
    Returns (mu, b_u (num_users,), b_i (num_items,)); index 0 (unseen) keeps a zero bias."""
    r = rating.double()
    mu = float(r.mean())
    bu = torch.zeros(num_users, dtype=torch.float64)
    bi = torch.zeros(num_items, dtype=torch.float64)
    n_u = torch.bincount(user, minlength=num_users).double()
    n_i = torch.bincount(item, minlength=num_items).double()
    for _ in range(sweeps):
        bu = torch.zeros_like(bu).index_add_(0, user, r - mu - bi[item]) / (reg_u + n_u)
        bi = torch.zeros_like(bi).index_add_(0, item, r - mu - bu[user]) / (reg_i + n_i)
    bu[0], bi[0] = 0.0, 0.0
    return mu, bu, bi
