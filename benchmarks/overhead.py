"""Engine overhead: the MNIST MLP recipe's model trained by a plain hand-written PyTorch loop, by
the strata Trainer with its defaults (progress display, metrics.jsonl, checkpoint at the end), and by
`strata.fit` on the same tensors (the Python route: the user's module and arrays), on the same data,
batch size and number of steps, alternating in one process. Prints the times and `ratio: X`
(Trainer / plain) and `fit ratio: X` (strata.fit / plain). Goal: <= 1.03 on CPU for both.
With --device cuda the tensors live on the GPU for all three, and each run ends with a synchronisation.

    STRATA_DATA_MIRROR=../shared/datasets python benchmarks/overhead.py [--examples 25600] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from strata.build import load_config
from strata.data import load_data
from strata.data.base import DataBundle, TensorSplit
from strata.models import build_model
from strata.train import Trainer
from strata.train.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import plain_epoch  # noqa: E402  the plain loop both benchmarks time

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mnist-mlp.toml"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(cfg, info, x, y, epochs: int, seed: int) -> float:
    """What a person writes by hand: model, AdamW, shuffled mini-batches, backward, step."""
    sync(x.device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, cfg.model.options, **info).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    model.train()
    for _ in range(epochs):
        plain_epoch(model, x, y, opt, cfg.data.batch_size)
    sync(x.device)
    return time.perf_counter() - t0


def strata_trainer(cfg, bundle, run_dir: Path, device) -> float:
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir=run_dir, device=device, bundle=bundle,
                      progress=Progress("lines", cfg.trainer.log_every_s, stream=io.StringIO()))
    trainer.fit()
    sync(device)
    return time.perf_counter() - t0


def strata_fit(cfg, info, x, y, run_dir: Path, seed: int, device) -> float:
    """The Python route: the user's own module (the same MLP) and tensors, no validation split."""
    import strata

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, cfg.model.options, **info)
    strata.fit(model, (x, y), epochs=cfg.trainer.max_epochs, batch_size=cfg.data.batch_size, lr=cfg.optimizer.lr,
               weight_decay=cfg.optimizer.weight_decay, val_split=0, run_dir=run_dir, device=device, verbose=0)
    sync(device)
    return time.perf_counter() - t0


def main(argv=None, out=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=25_600)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    out = out or sys.stdout
    device = torch.device(a.device)

    base = load_config(RECIPE, [f"trainer.max_epochs={a.epochs}", "data.val_fraction=0"])
    full = load_data(base.data)
    x = full.train.tensors["x"][: a.examples].contiguous()
    y = full.train.tensors["y"][: a.examples].contiguous()
    bundle = DataBundle(TensorSplit({"x": x, "y": y}), None, None, info=full.info)
    steps = a.epochs * -(-len(x) // base.data.batch_size)
    print(f"MNIST MLP {base.model.options.get('hidden')}, batch {base.data.batch_size}, {len(x)} examples x "
          f"{a.epochs} epochs = {steps} steps per run, torch {torch.__version__}, {device}, "
          f"{torch.get_num_threads()} threads", file=out)
    xd, yd = x.to(device), y.to(device)  # the plain loop's tensors on the device; strata moves its splits there once

    plain, ours, fits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        plain_loop(base, full.info, xd, yd, 1, 0)  # warm-up (allocator, kernels)
        for r in range(a.rounds):
            plain.append(plain_loop(base, full.info, xd, yd, a.epochs, r))
            ours.append(strata_trainer(base, bundle, Path(tmp) / f"run{r}", device))
            fits.append(strata_fit(base, full.info, x, y, Path(tmp) / f"fit{r}", r, device))
            print(f"round {r + 1}: plain {plain[-1]:.3f}s  strata {ours[-1]:.3f}s  strata.fit {fits[-1]:.3f}s  "
                  f"ratios {ours[-1] / plain[-1]:.3f} {fits[-1] / plain[-1]:.3f}", file=out)
    p, s, f = statistics.median(plain), statistics.median(ours), statistics.median(fits)
    print(f"plain PyTorch loop: {p:.3f}s (median of {a.rounds}), {(p / steps) * 1e6:.0f} us/step", file=out)
    print(f"strata Trainer:     {s:.3f}s (median of {a.rounds}), {(s / steps) * 1e6:.0f} us/step", file=out)
    print(f"strata.fit:         {f:.3f}s (median of {a.rounds}), {(f / steps) * 1e6:.0f} us/step", file=out)
    print(f"ratio: {s / p:.3f}", file=out)
    print(f"fit ratio: {f / p:.3f}", file=out)
    return {"plain_s": p, "trainer_s": s, "fit_s": f, "ratio": s / p, "fit_ratio": f / p, "steps": steps}


if __name__ == "__main__":
    main()
