"""Attributions: how much each input feature contributes to one output score.

- "integrated_gradients" (Sundararajan, Taly & Yan, ICML 2017): the path integral of the gradient
  from a baseline x' (zeros: a black image, a row of training means once standardised) to the input,
  times (x - x'). Completeness: the attributions sum to f(x) - f(x'); the gap left by the Riemann
  sum (midpoints, `steps` of them) is returned as `delta` so a user can see whether steps suffice.
- "gradient_x_input" (Shrikumar et al., 2016): the gradient at x times x; one backward pass, exact
  for a linear model, a first-order sketch otherwise.

`fn` maps a batch (B, ...) to scores (B, K); `target` (B,) picks the score to explain per example.
"""

from __future__ import annotations

from typing import Callable

import torch

METHODS = ("integrated_gradients", "gradient_x_input")


def _grad(fn: Callable, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d score_target / dx, score_target) for every example; x is not modified."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = fn(x).float().gather(1, target[:, None])[:, 0]  # (B,)
        (g,) = torch.autograd.grad(score.sum(), x)
    return g, score.detach()


def integrated_gradients(fn: Callable, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor | None = None,
                         steps: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(attributions shaped like x, delta (B,) = f(x) - f(x') - sum of attributions)."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    total = torch.zeros_like(x, dtype=torch.float32)
    for k in range(steps):
        alpha = (k + 0.5) / steps  # midpoint rule
        g, _ = _grad(fn, baseline + alpha * (x - baseline), target)
        total += g.float()
    attr = (x - baseline).float() * total / steps
    _, at_x = _grad(fn, x, target)
    _, at_base = _grad(fn, baseline, target)
    delta = at_x - at_base - attr.flatten(1).sum(1)
    return attr, delta


def gradient_x_input(fn: Callable, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, None]:
    g, _ = _grad(fn, x, target)
    return (g * x).float(), None


def attribute(method: str, fn: Callable, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor | None = None,
              steps: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attributions, completeness gap or None) by `method`, one of METHODS."""
    if method == "integrated_gradients":
        return integrated_gradients(fn, x, target, baseline=baseline, steps=steps)
    if method == "gradient_x_input":
        return gradient_x_input(fn, x, target)
    raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")


def heatmap(images: torch.Tensor, attr: torch.Tensor, min_side: int = 112) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] and their attributions -> (2N, 3, H', W') panels: each image,
    then its attribution over a dimmed copy (red: raises the score, blue: lowers it), scaled per
    image by its largest |attribution|; small images are enlarged (nearest) to min_side."""
    grey = images.float().mean(1, keepdim=True).clamp(0, 1)  # (N, 1, H, W)
    a = attr.float().sum(1, keepdim=True)  # (N, 1, H, W): channels summed
    a = a / a.flatten(1).abs().amax(1).clamp(min=1e-12)[:, None, None, None]
    pos, neg = a.clamp(min=0), (-a).clamp(min=0)
    base = 0.35 * grey
    overlay = torch.cat([base + pos * (1 - base), base * (1 - pos - neg).clamp(min=0), base + neg * (1 - base)], 1)
    panels = torch.stack([grey.expand(-1, 3, -1, -1), overlay], 1).flatten(0, 1)  # (2N, 3, H, W)
    scale = max(1, -(-min_side // max(images.shape[-2:])))
    return panels.repeat_interleave(scale, -2).repeat_interleave(scale, -1).clamp(0, 1)
