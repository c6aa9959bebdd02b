"""Engine overhead: the MNIST MLP recipe's model trained by a plain hand-written PyTorch loop, by
the strata Trainer with its defaults (progress display, metrics.jsonl, checkpoint at the end), and by
`strata.fit` on the same tensors (the Python route: the user's module and arrays), on the same data,
batch size and number of steps, alternating in one process. Prints the times and `ratio: X`
(Trainer / plain) and `fit ratio: X` (strata.fit / plain). Goal: <= 1.03 on CPU for both.

    STRATA_DATA_MIRROR=../shared/datasets python benchmarks/overhead.py [--examples 25600] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from strata.build import load_config
from strata.data import load_data
from strata.data.base import DataBundle, TensorSplit
from strata.models import build_model
from strata.train import Trainer
from strata.train.optim import build_optimizer
from strata.train.progress import Progress

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mnist-mlp.toml"


def plain_loop(cfg, info, x, y, epochs: int, seed: int) -> float:
    """What a person writes by hand: model, AdamW, shuffled mini-batches, backward, step."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, cfg.model.options, **info)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    bs = cfg.data.batch_size
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def strata_trainer(cfg, bundle, run_dir: Path) -> float:
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir=run_dir, device="cpu", bundle=bundle,
                      progress=Progress("lines", cfg.trainer.log_every_s, stream=io.StringIO()))
    trainer.fit()
    return time.perf_counter() - t0


def strata_fit(cfg, info, x, y, run_dir: Path, seed: int) -> float:
    """The Python route: the user's own module (the same MLP) and tensors, no validation split."""
    import strata

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, cfg.model.options, **info)
    strata.fit(model, (x, y), epochs=cfg.trainer.max_epochs, batch_size=cfg.data.batch_size, lr=cfg.optimizer.lr,
               weight_decay=cfg.optimizer.weight_decay, val_split=0, run_dir=run_dir, device="cpu", verbose=0)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=25_600)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    base = load_config(RECIPE, [f"trainer.max_epochs={a.epochs}", "data.val_fraction=0"])
    full = load_data(base.data)
    x = full.train.tensors["x"][: a.examples].contiguous()
    y = full.train.tensors["y"][: a.examples].contiguous()
    bundle = DataBundle(TensorSplit({"x": x, "y": y}), None, None, info=full.info)
    steps = a.epochs * -(-len(x) // base.data.batch_size)
    print(f"MNIST MLP {base.model.options.get('hidden')}, batch {base.data.batch_size}, {len(x)} examples x "
          f"{a.epochs} epochs = {steps} steps per run, torch {torch.__version__}, {torch.get_num_threads()} threads")

    plain, ours, fits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        plain_loop(base, full.info, x, y, 1, 0)  # warm-up (allocator, kernels)
        for r in range(a.rounds):
            plain.append(plain_loop(base, full.info, x, y, a.epochs, r))
            ours.append(strata_trainer(base, bundle, Path(tmp) / f"run{r}"))
            fits.append(strata_fit(base, full.info, x, y, Path(tmp) / f"fit{r}", r))
            print(f"round {r + 1}: plain {plain[-1]:.3f}s  strata {ours[-1]:.3f}s  strata.fit {fits[-1]:.3f}s  "
                  f"ratios {ours[-1] / plain[-1]:.3f} {fits[-1] / plain[-1]:.3f}")
    p, s, f = statistics.median(plain), statistics.median(ours), statistics.median(fits)
    print(f"plain PyTorch loop: {p:.3f}s (median of {a.rounds})")
    print(f"strata Trainer:     {s:.3f}s (median of {a.rounds})")
    print(f"strata.fit:         {f:.3f}s (median of {a.rounds})")
    print(f"ratio: {s / p:.3f}")
    print(f"fit ratio: {f / p:.3f}")


if __name__ == "__main__":
    main()
