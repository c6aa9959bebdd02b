"""Top-N ranking from implicit feedback: which items will a user interact with next (He et al.,
"Neural Collaborative Filtering", WWW 2017).

Training batches are the rated pairs {"user": (B,), "item": (B,)}, every one a positive; for each,
`negatives` items are drawn uniformly from all known items, and the model's score is trained as a
logit with binary cross-entropy (positives 1, drawn items 0). As in NCF's training, a drawn item is
not checked against the user's ratings (about 6 % of MovieLens draws are rated items).
Validation and test batches are {"user": (B,), "items": (B, 1 + K)}: the held-out item in column 0
among K sampled items the user never rated. Its rank r (0 = first) gives the metrics at `k`:
HR@k = [r < k] and NDCG@k = [r < k] / log2(r + 2), averaged over users. A sampled item scoring
exactly the held-out item's score ranks above it (a tie counts against the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strata.config import check
from strata.tasks import TASKS
from strata.tasks._recommend import PairTask


@dataclass(frozen=True)
class RankingConfig:
    negatives: int = 4  # items drawn per positive in training
    k: int = 10  # cut-off of HR@k and NDCG@k

    def __post_init__(self):
        check(self.negatives >= 1, "[task] negatives", f"must be >= 1, got {self.negatives}")
        check(self.k >= 1, "[task] k", f"must be >= 1, got {self.k}")


@TASKS.register("ranking")
class Ranking(PairTask):
    Config = RankingConfig
    name, split = "ranking", "leave_one_out"

    def __init__(self, cfg: RankingConfig, model, info: dict):
        super().__init__(cfg, model, info)
        self.num_items = int(info["num_items"])

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) logits: how likely the user interacts with the item."""
        return self.model(user, item).float()

    def training_step(self, batch):
        user, pos = batch["user"], batch["item"]
        b, n = len(user), self.cfg.negatives
        neg = torch.randint(1, self.num_items, (b * n,), device=user.device)  # uniform over known items
        logits = self(torch.cat([user, user.repeat_interleave(n)]), torch.cat([pos, neg]))
        labels = torch.cat([torch.ones(b, device=user.device), torch.zeros(b * n, device=user.device)])
        return F.binary_cross_entropy_with_logits(logits, labels)

    def validation_step(self, batch):
        user, items = batch["user"], batch["items"]  # (B,), (B, 1 + K)
        b, c = items.shape
        scores = self(user.repeat_interleave(c), items.reshape(-1)).reshape(b, c)
        rank = (scores[:, 1:] >= scores[:, :1]).sum(1)  # (B,) sampled items at or above the held-out one
        hit = (rank < self.cfg.k).float()
        ndcg = hit / torch.log2(rank.float() + 2)  # 1 / log2(r + 2) when r < k
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1
        loss = F.binary_cross_entropy_with_logits(scores, labels, reduction="sum")
        return {"loss": (loss, b * c), f"hr@{self.cfg.k}": (hit.sum(), b), f"ndcg@{self.cfg.k}": (ndcg.sum(), b)}

    @torch.no_grad()
    def predict_step(self, batch):
        p = torch.sigmoid(self(batch["user"], batch["item"])).cpu()
        return [{"score": round(float(v), 4)} for v in p]

    def score(self, user, item):
        return torch.sigmoid(self(user, item))  # the probability of an interaction


