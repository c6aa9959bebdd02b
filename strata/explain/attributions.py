"""Attributions: how much each input feature contributes to one output score, through Captum
(Kokhlikyan et al. 2020, "Captum: A unified and generic model interpretability library for PyTorch").

- "integrated_gradients" (Sundararajan, Taly & Yan, ICML 2017): the path integral of the gradient
  from a baseline x' (zeros: a black image, a row of training means once standardised) to the input,
  times (x - x'). Completeness: the attributions sum to f(x) - f(x'); the gap left by the Riemann
  sum (midpoints, `steps` of them) is returned so a user can see whether steps suffice.
- "gradient_x_input" (Shrikumar et al., 2016): the gradient at x times x; one backward pass, exact
  for a linear model, a first-order sketch otherwise.
- "saliency" (Simonyan, Vedaldi & Zisserman, 2014): |d score / dx|, how sensitive the score is to
  each feature (unsigned: says nothing about direction).
- "occlusion" (Zeiler & Fergus, 2014): the score lost when a window of the input is set to the
  baseline, spread over the window's features; windows sized from the input's shape (below).
- "grad_cam" (Selvaraju et al., ICCV 2017), images only: the last Conv2d's activations weighted by
  the spatial mean of the score's gradient, summed over channels, ReLU'd and upsampled (bilinear)
  to the image; the same map on every channel.

`fn(x, *args)` maps a batch (B, ...) to scores (B, K); `target` (B,) picks the score to explain per
example; `args` are further forward arguments with a batch dimension (sequence lengths).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from strata.errors import StrataError

METHODS = ("integrated_gradients", "gradient_x_input", "saliency", "occlusion", "grad_cam")
IMAGE_ONLY = ("grad_cam",)
# Rows of the batch Captum sends through the model at once (IG's path points, occlusion's windows).
ROWS_PER_PASS = 4096


def methods_for(kind: str) -> tuple[str, ...]:
    """The methods that apply to inputs of `kind` ("image", "table", "timeseries", ...)."""
    return METHODS if kind == "image" else tuple(m for m in METHODS if m not in IMAGE_ONLY)


def check_method(method: str, kind: str, methods: tuple[str, ...] | None = None) -> None:
    """A StrataError naming the methods that apply when `method` is unknown or does not fit `kind`."""
    valid = methods or methods_for(kind)
    if method in valid:
        return
    if method in METHODS or method == "attention":
        raise StrataError(f"--method {method} does not apply to {kind} inputs; for this run use one of "
                          f"{', '.join(valid)}")
    raise StrataError(f"--method must be one of {', '.join(valid)}, got {method!r}")


def last_conv(module: nn.Module) -> nn.Module:
    """The last nn.Conv2d of a model in definition order (Grad-CAM's layer)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise StrataError("grad_cam needs a convolutional network (an nn.Conv2d layer); this model has none; "
                          "use --method integrated_gradients or occlusion")
    return convs[-1]


def occlusion_window(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(window, strides) for one example's shape: images (C, H, W) a square of about a seventh of the
    shorter side over every channel at half-window strides (8x8 digits: single pixels, 28x28: 4x4
    at 2); other inputs one feature at a time."""
    if len(shape) == 3:
        c, h, w = shape
        side = max(1, min(h, w) // 7)
        step = max(1, side // 2)
        return (c, side, side), (c, step, step)
    return (1,) * len(shape), (1,) * len(shape)


def _rows(x: torch.Tensor) -> int:
    """Captum's internal batch: about ROWS_PER_PASS rows, a whole number of path points per example."""
    return max(1, ROWS_PER_PASS // len(x)) * len(x)


def attribute(method: str, fn: Callable, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor | None = None,
              steps: int = 32, args: tuple = (), layer: nn.Module | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attributions shaped like x, completeness gap f(x) - f(x') - sum (B,) for integrated gradients,
    else None) by `method`, one of METHODS. `layer`: grad_cam's convolution (default: none, an error)."""
    from captum.attr import (InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion,
                             Saliency)

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    x = x.detach().requires_grad_(method != "occlusion")
    base = torch.zeros_like(x) if baseline is None else baseline.expand_as(x).to(x)
    extra = tuple(args) or None
    with torch.enable_grad():
        if method == "integrated_gradients":
            attr, delta = IntegratedGradients(fn).attribute(
                x, base, target=target, additional_forward_args=extra, n_steps=steps, method="riemann_middle",
                internal_batch_size=_rows(x), return_convergence_delta=True)
            return attr.detach().float(), -delta.detach().float()  # Captum's delta is sum - (f(x) - f(x'))
        if method == "gradient_x_input":
            attr = InputXGradient(fn).attribute(x, target=target, additional_forward_args=extra)
            return attr.detach().float(), None
        if method == "saliency":
            attr = Saliency(fn).attribute(x, target=target, abs=True, additional_forward_args=extra)
            return attr.detach().float(), None
        if method == "occlusion":
            window, strides = occlusion_window(tuple(x.shape[1:]))
            attr = Occlusion(fn).attribute(x, window, strides=strides, baselines=base, target=target,
                                           additional_forward_args=extra,
                                           perturbations_per_eval=max(1, ROWS_PER_PASS // len(x)))
            return attr.detach().float(), None
        if x.dim() != 4:
            raise StrataError(f"grad_cam explains images (B, C, H, W); got inputs of shape {tuple(x.shape)}")
        if layer is None:
            raise ValueError("grad_cam needs the convolution to read: attribute(..., layer=last_conv(model))")
        cam = LayerGradCam(fn, layer).attribute(x, target=target, additional_forward_args=extra,
                                                relu_attributions=True)  # (B, 1, h, w)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")  # (B, 1, H, W)
        return cam.detach().float().expand_as(x).contiguous(), None


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
