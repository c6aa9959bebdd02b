"""Streaming vs in-memory image folders: the 60,000 MNIST training images written as PNG files (one
sub-folder per class, read through strata's own MNIST loader), then one shuffled pass of training
batches (batch 128) over them, four ways: decoded into memory (the default for data that fits) and
streamed from disk with 0, 1 and 2 DataLoader workers. The ways alternate, round after round; each
figure is the median over the rounds. Prints images per second and the ratio to the in-memory pass,
and the time each way takes to load (decode every file, or list them and sample the statistics).

    STRATA_DATA_MIRROR=../shared/datasets python benchmarks/streaming.py [--images 60000] [--rounds 3]

Each way keeps one loader across its rounds (the workers persist, as in training), so the first
round of a way with workers also starts them; the median leaves that out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from strata.config import DataConfig
from strata.data import DATASETS, load_data
from strata.train.loader import EpochBatches

WAYS = {"in memory": {"stream": False}, "streamed, 0 workers": {"stream": True, "num_workers": 0},
        "streamed, 1 worker": {"stream": True, "num_workers": 1},
        "streamed, 2 workers": {"stream": True, "num_workers": 2}}


def write_pngs(root: Path, count: int) -> None:
    """The first `count` MNIST training images as root/<digit>/<index>.png."""
    x, y, _, _ = DATASETS.get("mnist").arrays()
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(x[i]).save(root / str(int(y[i])) / f"{i:05d}.png")


def one_pass(batches: EpochBatches, epoch: int) -> float:
    t0 = time.perf_counter()
    for _, batch in batches.epoch(epoch):
        batch["x"].sum()  # touch the pixels
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60000, help="how many MNIST training images to write")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="strata-stream-bench-"))
    try:
        t0 = time.perf_counter()
        write_pngs(root, args.images)
        print(f"wrote {args.images:,} PNG files in {time.perf_counter() - t0:.1f} s")
        loaders, load_s = {}, {}
        for name, options in WAYS.items():
            t0 = time.perf_counter()
            bundle = load_data(DataConfig(name="image_folder", val_fraction=0.0, options={
                "root": str(root), "image_size": 28, "channels": 1, "test_fraction": 0.0, **options}))
            load_s[name] = time.perf_counter() - t0
            loaders[name] = EpochBatches(bundle.train, args.batch_size, True, 0, torch.device("cpu"),
                                         collate=bundle.collate)
        times = {name: [] for name in WAYS}
        names = list(WAYS)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # a different way first each round
                times[name].append(one_pass(loaders[name], r))
        n = args.images
        base = n / statistics.median(times["in memory"])
        print(f"\n{n:,} images, batch {args.batch_size}, {args.rounds} rounds, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s)")
        print(f"{'way':<22}{'load s':>9}{'pass s':>9}{'images/s':>11}{'ratio':>8}   passes (s)")
        for name in WAYS:
            med = statistics.median(times[name])
            print(f"{name:<22}{load_s[name]:>9.1f}{med:>9.2f}{n / med:>11,.0f}{n / med / base:>8.3f}   "
                  + " ".join(f"{t:.2f}" for t in times[name]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
