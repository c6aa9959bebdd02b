"""What the image generators (gan, diffusion) share: reading a `strata generate` request, drawing
samples in bounded batches into a grid and per-sample PNGs, and judging samples for `strata evaluate`.

A sampler here is `sample(labels, count, generator) -> (count, C, H, W) images in [0, 1]`, with
labels (count,) class indices or None, and `generator` a CPU torch.Generator from which every random
number is drawn (on the CPU, then moved), so a seed gives the same images on any device.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from strata.errors import StrataError

GEN_BATCH = 256  # samples drawn at a time: memory stays bounded for any --n
MAX_GRID = 400  # a grid PNG shows at most this many samples; --out-dir gets all of them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Sampler = Callable[[torch.Tensor | None, int, torch.Generator], torch.Tensor]


def _whole(value, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StrataError(f"{option} must be a whole number >= {minimum}, got {value!r}")
    return value


def parse_class(value, conditional: bool, class_names: list[str], what: str) -> int:
    """--class K as an index or a class name -> index, for a conditional model only."""
    if not conditional:
        raise StrataError(f"--class needs a class-conditional model; this {what} was trained unconditionally "
                          "([model] conditional = false). Drop --class, or train with conditional = true")
    k = len(class_names)
    idx = None
    if isinstance(value, bool):
        idx = None
    elif isinstance(value, int):
        idx = value
    elif isinstance(value, str):
        if value in class_names:
            idx = class_names.index(value)
        elif value.strip().lstrip("-").isdigit():
            idx = int(value)
    if idx is None or not 0 <= idx < k:
        shown = ", ".join(class_names[:12]) + (", ..." if k > 12 else "")
        raise StrataError(f"--class must be a class index 0..{k - 1} or a class name ({shown}), got {value!r}")
    return idx


def check_output(out, out_dir) -> None:
    if out is not None and Path(out).suffix.lower() not in IMAGE_SUFFIXES:
        raise StrataError(f"--out {out}: the grid is written as an image; give a file name ending in .png "
                          f"(or .jpg), e.g. --out samples.png")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise StrataError(f"--out-dir {out_dir}: exists and is not a folder; give a folder for one PNG per sample")


def reject(request: dict, unsupported: dict[str, str]) -> None:
    for key, why in unsupported.items():
        if request.get(key) is not None:
            raise StrataError(why)


def request_class(request: dict):
    return request.get("class_", request.get("class"))


class LabelPlan:
    """The requested class of each sample: the --class given, else the classes in turn (0, 1, ...,
    K-1, 0, ...). Sliced per batch, so a huge --n never builds an n-long tensor."""

    def __init__(self, cls: int | None, num_classes: int):
        self.cls, self.num_classes = cls, num_classes

    def __getitem__(self, s: slice) -> torch.Tensor:
        idx = torch.arange(s.start, s.stop)
        return torch.full_like(idx, self.cls) if self.cls is not None else idx % self.num_classes

    def classes(self, n: int) -> list[int]:
        return [self.cls] if self.cls is not None else list(range(min(n, self.num_classes)))


def plan_labels(n: int, cls: int | None, conditional: bool, num_classes: int) -> LabelPlan | None:
    return LabelPlan(cls, num_classes) if conditional else None


def draw(sample: Sampler, n: int, labels: LabelPlan | torch.Tensor | None, seed: int, batch: int = GEN_BATCH):
    """Yield (images, labels) batches of at most `batch` samples; one seeded generator for the lot."""
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, n, batch):
        count = min(batch, n - start)
        y = labels[start:start + count] if labels is not None else None
        yield sample(y, count, gen).float().cpu(), y


def write(sample: Sampler, n: int, labels: LabelPlan | None, seed: int, out, out_dir,
          num_classes: int | None = None) -> dict:
    """Draw n samples; a grid of the first MAX_GRID at `out`, every sample as a PNG in `out_dir`."""
    from strata.report.grid import save_grid, save_images

    grid: list[torch.Tensor] = []
    done = 0
    # Without --out-dir only the grid's samples are kept, so only those are drawn.
    total = n if out_dir is not None else min(n, MAX_GRID)
    for imgs, _ in draw(sample, total, labels, seed):
        if out_dir is not None:
            save_images(imgs, out_dir, start=done)
        if out is not None and done < MAX_GRID:
            grid.append(imgs[: MAX_GRID - done])
        done += len(imgs)
    result: dict = {"n": n, "seed": seed}
    if labels is not None:
        result["classes"] = labels.classes(n)
    if out is not None:
        shown = torch.cat(grid)
        # Classes in turn: one column per class, so each column shows one class.
        nrow = min(num_classes, len(shown)) if labels is not None and labels.cls is None and num_classes else None
        result["out"] = str(save_grid(shown, out, nrow=nrow))
        if len(shown) < n:
            result["grid_shows"] = len(shown)
    if out_dir is not None:
        result["out_dir"] = str(out_dir)
    return result


def generate(request: dict, run_dir, sample: Sampler, *, conditional: bool, class_names: list[str], what: str,
             extra: dict | None = None) -> dict:
    """The common part of `strata generate` for image generators (options already vetted by the task)."""
    n = _whole(request["n"], "--n") if request.get("n") is not None else 64
    seed = request.get("seed")
    seed = _whole(seed, "--seed", 0) if seed is not None else 0
    cls = request_class(request)
    cls = parse_class(cls, conditional, class_names, what) if cls is not None else None
    out, out_dir = request.get("out"), request.get("out_dir")
    if out is None and out_dir is None:
        out = Path(run_dir) / "samples.png"
    check_output(out, out_dir)
    labels = plan_labels(n, cls, conditional, len(class_names))
    result = write(sample, n, labels, seed, out, out_dir, len(class_names))
    result.update(extra or {})
    return result


def _subset(x: torch.Tensor, n: int) -> torch.Tensor:
    """n images drawn at random (fixed seed): MNIST's test file, for one, is not uniform along its
    length (its two halves come from different writers, judge Frechet ~39 between them)."""
    if n >= len(x):
        return x.float().cpu()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return x[idx].float().cpu()


def evaluate(sample: Sampler, bundle, split: str, run_dir, *, judge_run: str, n: int, info: dict,
             conditional: bool, seed: int = 0, batch: int = GEN_BATCH, device="cpu") -> dict[str, float]:
    """Judge n samples against n real images of `split` (strata/metrics/judge.py)."""
    from strata.metrics.judge import dataset_of, judge_samples, resolve_judge

    data = getattr(bundle, split, None)
    if data is None or not hasattr(data, "tensors"):
        raise StrataError(f"this data set has no in-memory {split} split of images to compare samples with")
    real = _subset(data.tensors["x"], n)
    ref = _subset(bundle.train.tensors["x"], n) if hasattr(bundle.train, "tensors") else None
    class_names = info.get("class_names") or [str(i) for i in range(info.get("num_classes", 0))]
    judge = resolve_judge(judge_run, dataset_of(run_dir), info, device=device)
    labels = plan_labels(n, None, conditional, len(class_names))
    batches = _reporting(draw(sample, n, labels, seed, batch), n, "samples drawn for the judge")
    return judge_samples(judge, batches, real, class_names, real_reference=ref)


def _reporting(batches: Iterator, n: int, what: str, every_s: float = 30.0, stream=None) -> Iterator:
    """Pass batches through, writing 'k/n what (elapsed, ~left)' to stderr at most every `every_s`
    seconds: sampling 10,000 images from a diffusion model on a CPU takes the better part of an hour."""
    stream = stream or sys.stderr
    t0 = last = time.perf_counter()
    done = 0
    for item in batches:
        yield item
        done += len(item[0])
        now = time.perf_counter()
        if now - last >= every_s or (done >= n and now - t0 >= every_s):
            last = now
            left = (now - t0) / done * (n - done)
            print(f"{done:,}/{n:,} {what} ({(now - t0) / 60:.1f} min, ~{left / 60:.1f} min left)",
                  file=stream, flush=True)


def check_image_info(info: dict, task: str) -> None:
    if "in_shape" not in info or len(info["in_shape"]) != 3:
        raise StrataError(f"task '{task}' needs an image data set (info['in_shape'] = [C, H, W]), "
                          f"got info keys {sorted(info)}")
    if info.get("normalize"):
        raise StrataError(f"task '{task}' models images in [0, 1]; set [data] normalize = false")


def build_image_model(model, info: dict, num_classes: int, task: str):
    """The [model] of an image generator, sized from the data: square images of info's channels."""
    from strata.models import build_model

    check_image_info(info, task)
    c, h, w = info["in_shape"]
    if h != w:
        raise StrataError(f"task '{task}' needs square images, got {h}x{w}")
    return build_model(model, in_channels=c, image_size=h,
                       num_classes=info.get("num_classes", num_classes))


def batch_labels(batch: dict, conditional: bool, what: str) -> torch.Tensor | None:
    """The class labels a conditional generator trains on; None for an unconditional one."""
    if not conditional:
        return None
    if "y" not in batch:
        raise StrataError(f"a class-conditional {what} needs labelled data (batches with 'y'); "
                          "use [model] conditional = false for unlabelled images")
    return batch["y"]
