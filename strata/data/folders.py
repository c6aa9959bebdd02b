"""Your own images: a folder with one sub-folder per class (the torchvision ImageFolder layout).

    root/cat/001.png  root/dog/xyz.jpg  ...                  -> test and val carved from it
    root/train/cat/...  root/val/cat/...  root/test/cat/...  -> the given splits (val, test optional)

Every image is converted to `channels` (1 grayscale, 3 RGB), resized to image_size x image_size and
held in memory as float32 in [0, 1] (10,000 RGB 64x64 images: 0.5 GB). A folder too big for that is
read image by image as batches are drawn (`stream`, `num_workers`: data/streaming.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from strata.config import check
from strata.data import DATASETS
from strata.data import splits as S
from strata.data.images import SUFFIXES, ImageDataset, image_bundle, load_image
from strata.data.streaming import StreamOptions, image_files_bundle, refuse_unlabelled, streams
from strata.errors import DataError


@dataclass(frozen=True)
class FolderConfig(StreamOptions):  # + stream, num_workers: folders bigger than memory (data/streaming.py)
    root: str = ""  # the folder holding one sub-folder per class (or train/, val/, test/)
    image_size: int = 32
    channels: int = 3  # 1: grayscale, 3: RGB
    test_fraction: float = 0.2  # carved from root when it has no test/ folder
    normalize: bool = False

    def __post_init__(self):
        super().__post_init__()
        check(bool(self.root), "[data] root", "missing: the image folder, with one sub-folder per class")
        check(self.image_size >= 1, "[data] image_size", f"must be >= 1, got {self.image_size}")
        check(self.channels in (1, 3), "[data] channels", f"must be 1 or 3, got {self.channels}")
        check(0 <= self.test_fraction < 1, "[data] test_fraction", f"must be in [0, 1), got {self.test_fraction}")


def scan(root: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their class indices, and the class names (sorted sub-folder names)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; [data] root must name a folder with one "
                        f"sub-folder of images per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"image folder {root} has no sub-folders; put each class's images in its own "
                            f"sub-folder (root/cat/1.png, root/dog/2.png)")
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{root} has classes not in the training folder: {', '.join(extra)}")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in SUFFIXES) if (root / c).is_dir() else []
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise DataError(f"no images ({', '.join(SUFFIXES)}) found under {root}")
    return paths, np.array(labels, dtype=np.int64), classes


def read_all(paths: list[Path], cfg: FolderConfig) -> np.ndarray:
    resized = []
    x = np.stack([load_image(p, cfg.channels, cfg.image_size, say=resized.append) for p in paths])
    if resized:
        print(f"strata: resized {len(resized)} of {len(paths)} images to {cfg.image_size}x{cfg.image_size}",
              file=sys.stderr)
    return x  # (N, C, H, W)


class ImageFolder(ImageDataset):
    Config = FolderConfig
    files = ()
    license = "yours"
    description = "Your own PNG/JPEG images, one sub-folder per class"
    splits = "root/train, root/val, root/test when present; else test_fraction and val_fraction carved from root"

    def load(self, data_cfg, cfg: FolderConfig):
        root = Path(cfg.root).expanduser()
        if (root / "train").is_dir():
            paths, y, classes = scan(root / "train")
            given = {k: scan(root / k, classes) for k in ("val", "test") if (root / k).is_dir()}
            test_fraction = None if "test" in given else cfg.test_fraction
            val_fraction = 0.0 if "val" in given else data_cfg.val_fraction
        else:
            paths, y, classes = scan(root)
            given, test_fraction, val_fraction = {}, cfg.test_fraction, data_cfg.val_fraction
        train, val, test, labelled = S.train_val_test(y, replace(data_cfg, val_fraction=val_fraction), test_fraction,
                                                      pool=True)
        n = len(paths) + sum(len(p) for p, _, _ in given.values())
        stream = streams(cfg, n * cfg.channels * cfg.image_size ** 2 * 4, f"the {n:,} images of {root}")
        if stream:
            refuse_unlabelled(data_cfg)

        def read(files):  # streamed: the paths, read as batches are drawn
            return files if stream else read_all(files, cfg)

        def take(idx):
            return (read([paths[i] for i in idx]), y[idx]) if idx is not None and len(idx) else None

        parts = {"train": take(train), "val": take(val), "test": take(test)}
        for k, (p, yk, _) in given.items():
            parts[k] = (read(p), yk)
        if stream:
            return image_files_bundle(parts, classes, cfg)
        return image_bundle(parts, classes, cfg.normalize, labelled=labelled)


DATASETS.register("image_folder", ImageFolder())
