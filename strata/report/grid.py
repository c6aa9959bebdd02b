"""Image grids and per-sample PNGs for generated or reconstructed images.

Tensors are (N, C, H, W) with values in [0, 1] and C = 1 (grey) or 3 (RGB); anything outside
[0, 1] is clipped. Used by `strata generate` for every image family (VAE, GAN, diffusion).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from strata.errors import StrataError, storage_error


def _check(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise StrataError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    return images.detach().float().cpu().clamp(0, 1)


def _to_pil(img: torch.Tensor):
    """(C, H, W) in [0, 1] -> PIL image (mode L or RGB)."""
    from PIL import Image

    arr = (img.numpy() * 255.0 + 0.5).astype(np.uint8)  # (C, H, W)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], mode="L")
    return Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")  # (H, W, C)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) -> one (C, H', W') image with the samples laid out row by row."""
    images = _check(images)
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = math.ceil(n / nrow)
    grid = torch.full((c, ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def png_bytes(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> bytes:
    """The samples as one PNG grid, in memory (for pages that inline their images)."""
    import io

    buf = io.BytesIO()
    _to_pil(make_grid(images, nrow=nrow, padding=padding)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_grid(images: torch.Tensor, path, nrow: int | None = None, padding: int = 2) -> Path:
    """Write the samples as one PNG grid (nrow per row; square by default). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise StrataError(f"--out {path} is a folder; give a file name such as {path / 'grid.png'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _to_pil(make_grid(images, nrow=nrow, padding=padding)).save(path)
    except OSError as e:
        raise storage_error(e, path) or e
    except ValueError as e:  # Pillow: a name whose extension it cannot write
        raise StrataError(f"--out {path}: {e}; give a file name ending in .png") from None
    return path


def save_images(images: torch.Tensor, out_dir, start: int = 0, prefix: str = "sample") -> list[Path]:
    """One PNG per sample, named prefix_000123.png from index `start` (call once per batch)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(_check(images)):
        p = out_dir / f"{prefix}_{start + i:06d}.png"
        _to_pil(img).save(p)
        paths.append(p)
    return paths


def load_image(path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A PNG/JPEG file -> (C, H, W) float in [0, 1]; an image of another size is an error (no resizing:
    a walk through latent space should start from images like the training data)."""
    from strata.data.images import open_image

    p = Path(path)
    if not p.is_file():
        raise StrataError(f"image {p} does not exist; give the path of a PNG or JPEG file")
    img = open_image(p, channels)  # mode L or RGB
    w, h = img.size
    if (h, w) != tuple(size):
        raise StrataError(f"image {p} is {w}x{h} pixels; this model takes {size[1]}x{size[0]} images "
                          f"(resize it first, e.g. with PIL Image.resize)")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)  # (C, H, W)
