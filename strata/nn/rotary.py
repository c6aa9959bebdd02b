"""Rotary position embedding (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding"). Each pair of channels (x_i, x_{i+D/2}) of a query or key at position p is rotated by
the angle p * theta_i with theta_i = base^(-2i/D), so that q_m . k_n depends on m - n only.
"""

from __future__ import annotations

import torch


def rotary_tables(head_dim: int, max_len: int, base: float = 10000.0,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_len, head_dim): row p holds the angles of position p."""
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embedding needs an even head width, got {head_dim}")
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)  # (D/2,)
    angles = torch.arange(max_len, dtype=torch.float32, device=device)[:, None] * theta[None, :]  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D): the same angle for x_i and x_{i+D/2}
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos, sin: (T, D) for the positions of x. Rotation in each channel pair:
    x' = x cos(p theta) + rotate_half(x) sin(p theta)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
