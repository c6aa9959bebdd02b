"""Judging generated images without the internet: a classifier trained on the same data set.

Inception weights cannot be downloaded here, so strata scores samples with a "judge": a run of the
`classify` task on the same data set (a `cnn` exposes `features(x)`, its penultimate activations,
and `head`, its final Linear). From it come three figures:

- frechet: the Frechet distance between the judge's penultimate features of N generated and N real
  images (strata/metrics/frechet.py). Same idea as FID, different features: NOT comparable with
  Inception FID figures in papers, only between strata runs judged by the same judge.
  `frechet_real` is the same distance between N training and N test images: the floor a
  perfect generator would reach with this judge and this N.
- share/<class>: the judge's label distribution over the samples; share_min is the rarest class
  (mode collapse shows up as a class near 0).
- recognised: for class-conditional models, how often the judge assigns the class that was asked
  for.

The judge is `[task] judge_run = "runs/mnist-cnn"` (a classify run folder) when given; otherwise
one is trained once per data set with JUDGE_RECIPE and cached under STRATA_HOME/judges/<data set>.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from strata.errors import StrataError
from strata.metrics.frechet import frechet_from_features
from strata.run_folder import RunFolder

# The judge trained on the fly when no judge_run is given: the LeNet-style cnn with shift
# augmentation (about 99.2% test accuracy on MNIST, 91% on Fashion-MNIST after 3 epochs).
JUDGE_VERSION = "cnn-v1"
JUDGE_RECIPE = {
    "model": {"name": "cnn", "channels": [32, 64], "fc_hidden": 128, "dropout": 0.2},
    "task": {"name": "classify", "augment": "shift", "shift_pixels": 2},
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
    "schedule": {"name": "cosine"},
    "trainer": {"max_epochs": 3, "seed": 0, "progress": "lines", "log_every_s": 60.0},
}


class Judge:
    """A trained classifier used as a feature extractor and labeller for images in [0, 1]."""

    def __init__(self, task: torch.nn.Module, info: dict, where: str):
        model = getattr(task, "model", None)
        if model is None or not hasattr(model, "features") or not hasattr(model, "head"):
            raise StrataError(f"judge {where}: needs a classify run whose model has features(x) and head "
                              f"(e.g. model 'cnn'), got {type(model).__name__ if model is not None else type(task).__name__}")
        self.model = model.eval()
        self.info = info
        self.where = where
        self.device = next(model.parameters()).device

    def check_matches(self, info: dict) -> None:
        """The judge must have been trained on images shaped like the generator's, with the same classes."""
        mine, theirs = list(self.info.get("in_shape", [])), list(info.get("in_shape", []))
        if mine != theirs:
            raise StrataError(f"judge {self.where} was trained on images of shape {mine}, this run makes {theirs}; "
                              "give a judge_run trained on the same data set")
        if info.get("class_names") and self.info.get("class_names") != info.get("class_names"):
            raise StrataError(f"judge {self.where} knows the classes {self.info.get('class_names')}, this run's data "
                              f"set has {info.get('class_names')}; give a judge_run trained on the same data set")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> penultimate features (B, F) and predicted classes (B,), on the CPU."""
        from strata.data.images import apply_normalize

        x = apply_normalize(x.float().cpu(), self.info.get("normalize")).to(self.device)
        f = self.model.features(x)
        return f.float().cpu(), self.model.head(f).argmax(-1).cpu()

    def run(self, images: Iterable[torch.Tensor], batch: int = 500):
        """Features and predictions of a stream of image batches, concatenated."""
        feats, preds = [], []
        for x in images:
            for i in range(0, len(x), batch):
                f, p = self(x[i:i + batch])
                feats.append(f)
                preds.append(p)
        return torch.cat(feats), torch.cat(preds)


def load_judge(run_dir: str | Path, device: str | torch.device = "cpu") -> Judge:
    from strata.api import load_run

    run = load_run(run_dir, device=device)
    if run.cfg.task.name != "classify":
        raise StrataError(f"judge_run {run_dir}: is a '{run.cfg.task.name}' run; the judge must be a 'classify' run "
                          "on the same data set (e.g. trained from recipes/mnist-cnn.toml)")
    return Judge(run.task, run.info, str(run_dir))


def judge_cache(dataset: str) -> Path:
    from strata.data.download import cache_dir

    return cache_dir() / "judges" / f"{dataset}-{JUDGE_VERSION}"


def train_judge(dataset: str, data_options: dict | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Train the default judge for `dataset` into the cache (once); returns its run folder.
    The run is trained in a private folder and renamed into place, so two processes racing end
    with one complete judge."""
    from strata.api import train

    target = judge_cache(dataset)
    if RunFolder(target).is_finished():
        return target
    say = say or (lambda m: print(f"strata: {m}", file=sys.stderr))
    say(f"training a judge classifier for '{dataset}' (once; cached in {target})")
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = json.loads(json.dumps(JUDGE_RECIPE))
    cfg["name"] = f"judge-{dataset}"
    cfg["data"] = {"name": dataset, "batch_size": 128, **(data_options or {})}
    train(cfg, run_dir=tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_judge(judge_run: str, dataset: str | None, info: dict, train_if_missing: bool = True,
                  device: str | torch.device = "cpu") -> Judge | None:
    """The judge named by judge_run, else the cached default judge for the data set (trained when
    missing and allowed); None when there is none and training is not allowed."""
    if judge_run:
        if not Path(judge_run).is_dir():
            raise StrataError(f"[task] judge_run: {judge_run} is not a folder; give the run folder of a 'classify' "
                              "run on the same data set, or leave judge_run out to train one automatically")
        judge = load_judge(judge_run, device)
    else:
        if dataset is None:
            raise StrataError("no judge: set [task] judge_run to a classify run folder on the same data set")
        path = judge_cache(dataset)
        if not RunFolder(path).is_finished():
            if not train_if_missing:
                return None
            path = train_judge(dataset)
        judge = load_judge(path, device)
    judge.check_matches(info)
    return judge


def dataset_of(run_dir: str | Path) -> str | None:
    """The [data] name in a run folder's config.toml."""
    return RunFolder(run_dir).data_name()


def judge_samples(judge: Judge, samples: Iterable[tuple[torch.Tensor, torch.Tensor | None]], real: torch.Tensor,
                  class_names: list[str], real_reference: torch.Tensor | None = None) -> dict[str, float]:
    """The figures for generated images.

    samples: batches of (images (B, C, H, W) in [0, 1], requested classes (B,) or None);
    real: (N, C, H, W) real images in [0, 1] to compare with;
    real_reference: other real images (e.g. training ones), for the frechet_real floor."""
    feats, preds, asked = [], [], []
    n = 0
    for x, y in samples:
        f, p = judge(x)
        feats.append(f)
        preds.append(p)
        if y is not None:
            asked.append(y.cpu())
        n += len(x)
    if n < 2:
        raise StrataError(f"need at least 2 samples to judge, got {n}")
    gen_f, gen_p = torch.cat(feats), torch.cat(preds)
    real_f, _ = judge.run([real])
    out = {"frechet": frechet_from_features(gen_f, real_f), "samples": float(n)}
    if real_reference is not None and len(real_reference) >= 2:
        ref_f, _ = judge.run([real_reference])
        out["frechet_real"] = frechet_from_features(ref_f, real_f)
    k = len(class_names)
    share = torch.bincount(gen_p, minlength=k).double() / n
    for name, s in zip(class_names, share.tolist()):
        out[f"share/{name}"] = s
    out["share_min"] = float(share.min())
    out["share_max"] = float(share.max())
    if asked:
        asked_t = torch.cat(asked)
        out["recognised"] = float((asked_t == gen_p).double().mean())
        per = []
        for c in range(k):
            mask = asked_t == c
            if mask.any():
                per.append(float((gen_p[mask] == c).double().mean()))
        out["recognised_min_class"] = min(per)
    return out
