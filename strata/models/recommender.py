"""Recommenders that score a (user, item) pair from learned embeddings.

- `mf`: biased matrix factorisation (Koren, Bell & Volinsky, "Matrix Factorization Techniques for
  Recommender Systems", IEEE Computer 2009): score = b_u + b_i + p_u . q_i. The global mean is the
  task's (a rating task adds it), so an untrained model predicts the mean.
- `neumf`: neural collaborative filtering (He et al., "Neural Collaborative Filtering", WWW 2017):
  a generalised matrix factorisation branch (p_u * q_i, element-wise) and an MLP over the
  concatenated embeddings of a second pair of tables, joined by one linear layer.

Both take (user, item) index tensors of shape (B,) and return (B,) scores: a rating offset for the
`rating` task, a logit for `ranking`. Index 0 is a user or item unseen in training: its vectors and
biases are held at zero, so it scores as the average user / item would.
`penalty(user, item)` is each pair's squared L2 norm of the parameters it used (the per-example
regularisation of Koren et al., which weight decay over whole tables would not give).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS


def _embedding(n: int, dim: int, std: float) -> nn.Embedding:
    e = nn.Embedding(n, dim)
    nn.init.normal_(e.weight, std=std)
    return e


def _known(index: torch.Tensor) -> torch.Tensor:
    """(B, 1) 1.0 for users / items seen in training, 0.0 for index 0."""
    return (index > 0).unsqueeze(-1).float()


@dataclass(frozen=True)
class MFConfig:
    num_users: int = 1  # from the data set (index 0 = unseen)
    num_items: int = 1
    dim: int = 64
    biases: bool = True
    init_std: float = 0.01

    def __post_init__(self):
        check(self.num_users >= 1 and self.num_items >= 1, "[model] num_users / num_items",
              f"must be >= 1, got {self.num_users} / {self.num_items}")
        check(self.dim >= 1, "[model] dim", f"must be >= 1, got {self.dim}")
        check(self.init_std > 0, "[model] init_std", f"must be > 0, got {self.init_std}")


@MODELS.register("mf")
class MatrixFactorization(nn.Module):
    Config = MFConfig

    def __init__(self, cfg: MFConfig):
        super().__init__()
        self.cfg = cfg
        self.user = _embedding(cfg.num_users, cfg.dim, cfg.init_std)  # p_u
        self.item = _embedding(cfg.num_items, cfg.dim, cfg.init_std)  # q_i
        self.user_bias = nn.Embedding(cfg.num_users, 1)  # b_u
        self.item_bias = nn.Embedding(cfg.num_items, 1)  # b_i
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        if not cfg.biases:
            self.user_bias.weight.requires_grad_(False)
            self.item_bias.weight.requires_grad_(False)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        ku, ki = _known(user), _known(item)
        p, q = self.user(user) * ku, self.item(item) * ki  # (B, dim)
        b = self.user_bias(user) * ku + self.item_bias(item) * ki  # (B, 1)
        return (p * q).sum(-1) + b[:, 0]  # b_u + b_i + p_u . q_i

    def penalty(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) ||p_u||^2 + ||q_i||^2 + b_u^2 + b_i^2."""
        return (self.user(user).pow(2).sum(-1) + self.item(item).pow(2).sum(-1)
                + self.user_bias(user)[:, 0].pow(2) + self.item_bias(item)[:, 0].pow(2))


@dataclass(frozen=True)
class NeuMFConfig:
    num_users: int = 1
    num_items: int = 1
    gmf_dim: int = 32  # the matrix-factorisation branch's embedding width
    mlp_dims: tuple[int, ...] = (64, 32, 16)  # the first is the width of user + item embeddings together
    dropout: float = 0.0
    init_std: float = 0.01

    def __post_init__(self):
        check(self.num_users >= 1 and self.num_items >= 1, "[model] num_users / num_items",
              f"must be >= 1, got {self.num_users} / {self.num_items}")
        check(self.gmf_dim >= 1, "[model] gmf_dim", f"must be >= 1, got {self.gmf_dim}")
        check(len(self.mlp_dims) >= 1 and all(d >= 1 for d in self.mlp_dims), "[model] mlp_dims",
              f"widths must be >= 1, at least one, got {list(self.mlp_dims)}")
        check(self.mlp_dims[0] % 2 == 0, "[model] mlp_dims",
              f"the first width is split between user and item embeddings: must be even, got {self.mlp_dims[0]}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.init_std > 0, "[model] init_std", f"must be > 0, got {self.init_std}")


@MODELS.register("neumf")
class NeuMF(nn.Module):
    Config = NeuMFConfig

    def __init__(self, cfg: NeuMFConfig):
        super().__init__()
        self.cfg = cfg
        half = cfg.mlp_dims[0] // 2
        self.gmf_user = _embedding(cfg.num_users, cfg.gmf_dim, cfg.init_std)
        self.gmf_item = _embedding(cfg.num_items, cfg.gmf_dim, cfg.init_std)
        self.mlp_user = _embedding(cfg.num_users, half, cfg.init_std)
        self.mlp_item = _embedding(cfg.num_items, half, cfg.init_std)
        layers: list[nn.Module] = []
        for a, b in zip(cfg.mlp_dims[:-1], cfg.mlp_dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.gmf_dim + cfg.mlp_dims[-1], 1)  # h^T [phi_GMF, phi_MLP]

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        ku, ki = _known(user), _known(item)
        gmf = self.gmf_user(user) * ku * self.gmf_item(item) * ki  # (B, gmf_dim): p_u * q_i
        x = torch.cat([self.mlp_user(user) * ku, self.mlp_item(item) * ki], -1)  # (B, mlp_dims[0])
        return self.head(torch.cat([gmf, self.mlp(x)], -1))[:, 0]  # (B,)

    def penalty(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) squared norms of the four embedding rows the pair used."""
        return sum(t(i).pow(2).sum(-1) for t, i in ((self.gmf_user, user), (self.gmf_item, item),
                                                    (self.mlp_user, user), (self.mlp_item, item)))


# Presets (MovieLens 100K, u1 split: 944 user rows, 1,630 item rows): name -> (config, parameters)
PRESETS = {
    "mf-64": (MFConfig(num_users=944, num_items=1630, dim=64), 167_310),
    "neumf-32": (NeuMFConfig(num_users=944, num_items=1630), 167_393),
}
