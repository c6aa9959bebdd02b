"""The position-wise feed-forward block of a transformer (Vaswani et al. 2017, section 3.3):
Linear(dim -> hidden) -> GELU -> Linear(hidden -> dim) -> dropout, applied to every position alike.
GELU instead of ReLU as in GPT-2 (Radford et al. 2019)."""

from __future__ import annotations

from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(self.act(self.up(x))))
