"""Image helpers shared by every image data set: reading PNG/JPEG files into float arrays the way the
training data looks, channel statistics, and `strata predict` on image files.

Images are float32 in [0, 1], shape (C, H, W). Normalisation is opt-in per data set (`normalize =
true` in [data]): the training split's per-channel mean/std are then applied to every split and
recorded in `info["normalize"]`, so predict applies the same numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from strata.data.base import DatasetSpec
from strata.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def open_image(path: str | Path, channels: int):
    """A PIL image in mode L (channels=1) or RGB (3); transparency is laid over white."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as e:  # a header claiming more pixels than Pillow will decode
        raise DataError(f"{path} claims to be an image too large to open safely ({e}); give an image of "
                        "ordinary size (a few megapixels at most)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path} is not an image Pillow can read ({e}); expected a PNG or JPEG file") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if channels not in (1, 3):
        raise DataError(f"images with {channels} channels are not supported; use 1 (grayscale) or 3 (RGB)")
    return img


def convert_channels(img, channels: int, path, say=None):
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode and say and img.mode not in ("1", "L", "I", "I;16", "F", "P"):
        say(f"converted {path} from {img.mode} to {'grayscale' if channels == 1 else 'RGB'} (the training channels)")
    return img.convert(mode)


def load_image(path: str | Path, channels: int, size: int | tuple[int, int], say=None) -> np.ndarray:
    """float32 (channels, H, W) in [0, 1], resized to `size` (int: square) when it differs.
    `say(message)` is told about any resize."""
    h, w = (size, size) if isinstance(size, int) else size
    img = convert_channels(open_image(path, channels), channels, path, say)
    if img.size != (w, h):
        from PIL import Image

        if say:
            say(f"resized {path} from {img.size[0]}x{img.size[1]} to {w}x{h} (the training size)")
        # shrinking: average each pixel's footprint (box), as scanned digits are made; growing: bilinear
        shrink = img.size[0] > w or img.size[1] > h
        img = img.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def border_mean(x: np.ndarray) -> float:
    """Mean of the outermost pixels of (..., H, W): the background level."""
    edges = [x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]]
    return float(sum(e.sum() for e in edges) / sum(e.size for e in edges))


def background(x: np.ndarray, threshold: float | None = None) -> str | None:
    """'dark' or 'light' when the images (N, C, H, W) share a clear background, else None. With a
    threshold (a single input judged against a known training background), the nearer side wins."""
    m = border_mean(x)
    if threshold is not None:
        return "dark" if m < threshold else "light"
    return "dark" if m < 0.25 else "light" if m > 0.75 else None


def channel_stats(x: np.ndarray) -> dict:
    """Per-channel mean and std of (N, C, H, W), in float64 for accuracy."""
    c = x.shape[1]
    mean = [float(x[:, i].mean(dtype=np.float64)) for i in range(c)]
    std = [max(float(x[:, i].std(dtype=np.float64)), 1e-6) for i in range(c)]
    return {"mean": mean, "std": std}


def apply_normalize(x: torch.Tensor, stats: dict | None) -> torch.Tensor:
    if not stats:
        return x
    shape = (1, -1, 1, 1)
    mean = torch.tensor(stats["mean"], dtype=x.dtype).view(shape)
    std = torch.tensor(stats["std"], dtype=x.dtype).view(shape)
    return (x - mean) / std


def image_info(x_train: np.ndarray, class_names: list[str], normalize: bool) -> dict:
    """The `info` of an image classification set from its training images (N, C, H, W)."""
    _, c, h, w = x_train.shape
    return {
        "kind": "image",
        "in_shape": [c, h, w],
        "in_channels": c,
        "image_size": h if h == w else [h, w],
        "in_features": c * h * w,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "background": background(x_train),
        "normalize": channel_stats(x_train) if normalize else None,
    }


def encode_image_files(inputs: list[str], info: dict, say=None) -> dict[str, torch.Tensor]:
    """Image files -> {"x": (B, C, H, W)} prepared like the training data of `info`: channels
    converted, resized, inverted when their background is the opposite of training's, normalised."""
    if say is None:
        def say(msg):
            print(f"strata: {msg}", file=sys.stderr)
    if not inputs:
        raise DataError("no input files given; pass one or more PNG/JPEG paths")
    c, h, w = info["in_shape"]
    bg = info.get("background")
    out = []
    for p in inputs:
        x = load_image(p, c, (h, w), say)
        mine = background(x[None], threshold=0.5) if bg else None
        if bg and mine and mine != bg:
            say(f"inverted {p}: its background is {mine}, training images have a {bg} background")
            x = 1.0 - x
        out.append(x)
    x = torch.from_numpy(np.stack(out))
    return {"x": apply_normalize(x, info.get("normalize"))}


@dataclass(frozen=True)
class ImageSetConfig:
    """[data] keys of the fixed image sets (mnist, fashion_mnist, digits)."""

    normalize: bool = False  # standardise with the training split's per-channel mean/std


class ImageDataset(DatasetSpec):
    """Base for image classification sets: `strata predict RUN_DIR a.png b.jpg` works on all of them."""

    def encode_inputs(self, inputs, info, run_dir):
        return encode_image_files(list(inputs), info)


def to_float(x: np.ndarray) -> torch.Tensor:
    """float32 tensor in [0, 1] from uint8 pixels (0..255) or from floats already in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t.to(torch.float32)


def image_bundle(splits: dict, class_names: list[str], normalize: bool, labelled=None):
    """DataBundle of TensorSplits {"x": float32 (N, C, H, W), "y": int64 (N,)} from
    {"train": (x, y), "val": (x, y) | None, "test": (x, y) | None}, x (N, C, H, W) uint8 or
    float in [0, 1]. labelled: the mask over train of examples that keep their labels (DataBundle.labelled)."""
    from strata.data.base import DataBundle, TensorSplit

    xs = {k: None if v is None else to_float(v[0]) for k, v in splits.items()}
    info = image_info(xs["train"].numpy(), class_names, normalize)

    def split(k):
        if splits.get(k) is None:
            return None
        x = apply_normalize(xs[k], info["normalize"])
        return TensorSplit({"x": x, "y": torch.from_numpy(np.asarray(splits[k][1], dtype=np.int64))})

    return DataBundle(train=split("train"), val=split("val"), test=split("test"), info=info, labelled=labelled)
