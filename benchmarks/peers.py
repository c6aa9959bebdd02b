"""Speed against the peers: a plain PyTorch loop, strata, PyTorch Lightning and Keras 3 (torch backend)
train the same model on the same in-memory MNIST tensors, with the same batch, number of steps,
optimiser (AdamW, lr 1e-3, weight decay 0.01, constant schedule) and seed, in alternating rounds in
one process; prints each one's median time, its per-step overhead over the plain loop and its ratio.

Models: the MNIST MLP recipe's network (784-1024-1024-10, dropout 0.2), a small CNN (two 3x3 conv
stages of 16 and 32 channels, max pooling, a linear head) and a tiny linear model (784-10), where the
per-step cost of the framework matters most. Every framework trains the very same torch module from the
same initial weights (Keras through keras.layers.TorchModuleWrapper).

What each is set to (each one's ordinary `fit`, with the display and files a run leaves turned off where
the framework allows it):
- plain: shuffled index batches of the tensors, forward, cross-entropy, zero_grad, backward, step, with
  torch's AdamW as a person writes it (`AdamW(model.parameters(), ...)`: every tensor decayed, and on a
  CPU torch's per-tensor implementation).
- plain-same-opt: the same loop with the optimiser strata builds from the same settings (torch's fused
  AdamW kernel; biases and norm gains not decayed). Between it and strata lies only the framework:
  strata's overhead is its mean step minus this loop's.
- strata: `strata.fit(model, (x, y), val_split=0, verbose=0)`: no progress display; it still writes its
  run folder (config, metrics.jsonl and metrics.csv, and the final checkpoint).
- Lightning: `Trainer(enable_progress_bar=False, logger=False, enable_checkpointing=False,
  enable_model_summary=False)` on a DataLoader of a TensorDataset (batch 128, shuffled).
- Keras: `model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=True)` on NumPy arrays.

The plain loops and strata time-stamp every step (one list append; strata's through a callback), so
their mean step from the first to the last is measured too, free of a run's fixed costs (set-up, the run
folder) and of its first step; the median over rounds is the figure. The peers' own batch hooks would add
work of their own (Keras converts its logs each batch), so they are timed whole.

`--cold` adds the first epoch of a new process (what every `strata train` is) for plain and strata:
each in its own fresh interpreter, alternating, with its wall time and minor page faults.

`--lockstep` times strata's per-step overhead step by step: after each strata step a callback runs one
step of plain-same-opt on a twin of the model, and each strata step is paired with the plain step beside
it. Separate runs of the two loops cannot resolve tens of microseconds on a machine whose speed moves by
tens of percent from one second to the next; pairs a millisecond apart can (the median of ~2,000 pairs
moved by a few microseconds between runs here).

`--instructions` counts, instead of timing, the machine instructions of one step of plain-same-opt and
of strata (valgrind's callgrind, collecting only between step 20 and step 50 of a run; the overhead's
count moved by ~15 % between runs here, where the step times of a noisy machine spread by 100 us): strata's
overhead in instructions a step, and in microseconds at two rates of this machine, measured in the same
run: the rate of the plain loop's own step (mostly torch kernels) and the rate of a loop of plain Python
calls, attribute and dict look-ups (the interpreter's work, which the framework's extra code is).
Needs valgrind (Debian: `apt install valgrind`); a few minutes, mostly torch's import under valgrind.

    pip install -e '.[peers]'    # Lightning and Keras: only for this benchmark, never for the tests
    STRATA_DATA_MIRROR=... OMP_NUM_THREADS=1 python benchmarks/peers.py [--rounds 5] [--steps 400] [--cold]
        [--instructions] [--lockstep]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: Keras 3 on PyTorch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

LR, WD, BATCH = 1e-3, 0.01, 128


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 1024),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (16, 14, 14)
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (32, 7, 7)
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


MODELS = {"mlp": mlp, "cnn": cnn, "linear": linear}


def mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n MNIST training images, (n, 1, 28, 28) float32 normalised, and their labels."""
    from strata.build import load_config
    from strata.data import load_data

    cfg = load_config(Path(__file__).resolve().parent.parent / "recipes" / "mnist-mlp.toml", ["data.val_fraction=0"])
    train = load_data(cfg.data).train.tensors
    return train["x"][:n].contiguous(), train["y"][:n].contiguous()


def timed(fn):
    def run(*args):
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0
    return run


def plain_epoch(model: nn.Module, x, y, opt: torch.optim.Optimizer, batch: int = BATCH,
                stamps: list | None = None) -> None:
    """One epoch of the loop a person writes: shuffled index batches of the tensors, forward,
    cross-entropy, zero_grad, backward, step (benchmarks/overhead.py's plain loop too)."""
    perm = torch.randperm(len(x)).to(x.device)
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if stamps is not None:
            stamps.append(time.perf_counter())


def plain_loop(model: nn.Module, x, y, seed: int, opt: torch.optim.Optimizer, stamps: list | None) -> None:
    torch.manual_seed(seed)
    model.train()
    plain_epoch(model, x, y, opt, BATCH, stamps)


@timed
def plain(model: nn.Module, x, y, seed: int, stamps: list | None = None) -> None:
    """The loop a person writes, with torch's defaults: AdamW over model.parameters()."""
    plain_loop(model, x, y, seed, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD), stamps)


@timed
def plain_same_opt(model: nn.Module, x, y, seed: int, stamps: list | None = None) -> None:
    """The same loop with the optimiser strata builds from the same settings (torch's fused AdamW kernel,
    biases and norm gains not decayed): what is left between it and strata is the framework."""
    from strata.config import OptimizerConfig
    from strata.train.optim import build_optimizer

    plain_loop(model, x, y, seed, build_optimizer(model.parameters(), OptimizerConfig("adamw", lr=LR, weight_decay=WD)),
               stamps)


@timed
def strata_fit(model: nn.Module, x, y, seed: int, stamps: list | None = None) -> None:
    import strata

    class Stamp(strata.Callback):
        def on_batch_end(self, trainer, step, loss):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        strata.fit(model, (x, y), epochs=1, batch_size=BATCH, lr=LR, weight_decay=WD, val_split=0, seed=seed,
                   run_dir=Path(tmp) / "run", device="cpu", verbose=0,
                   callbacks=[Stamp()] if stamps is not None else ())


@timed
def lightning(model: nn.Module, x, y, seed: int, stamps: None = None) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WD)

    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True))


@timed
def keras_fit(model: nn.Module, x, y, seed: int, stamps: None = None) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(x.shape[1:]))
    net = keras.Model(inputs, keras.layers.TorchModuleWrapper(model, output_shape=(None, 10))(inputs))
    net.compile(optimizer=keras.optimizers.AdamW(learning_rate=LR, weight_decay=WD, epsilon=1e-8),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x.numpy(), y.numpy(), batch_size=BATCH, epochs=1, verbose=0, shuffle=True)


FRAMEWORKS = {"plain": plain, "plain-same-opt": plain_same_opt, "strata": strata_fit, "lightning": lightning,
              "keras": keras_fit}
# Those whose every step is time-stamped (one list append after each optimiser step: the peers' own batch
# hooks would add work of their own, such as Keras converting its logs each batch, so they are timed whole).
STAMPED = ("plain", "plain-same-opt", "strata")


def quiet_peers() -> None:
    """The peers' banners and tips are not results."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)


def available(names: list[str]) -> list[str]:
    out = []
    for name in names:
        module = {"lightning": "lightning", "keras": "keras"}.get(name)
        try:
            if module:
                __import__(module)
            out.append(name)
        except ImportError:
            print(f"{name}: not installed (pip install -e '.[peers]'); left out", flush=True)
    return out


def compare(model_name: str, x, y, names: list[str], rounds: int, short: int):
    """Median seconds of a run of len(x) examples and of its first `short` batches, per framework; and,
    for the time-stamped ones, the median over rounds of a full run's mean step."""
    torch.manual_seed(0)
    initial = MODELS[model_name]()
    fresh = lambda: copy.deepcopy(initial)  # noqa: E731  the same initial weights for every framework
    xs, ys = x[: short * BATCH], y[: short * BATCH]
    for name in names:  # warm-up: imports, kernels, the allocator
        FRAMEWORKS[name](fresh(), xs, ys, 0)
    times: dict[str, dict[str, list[float]]] = {n: {"full": [], "short": []} for n in names}
    steps: dict[str, list[float]] = {n: [] for n in names if n in STAMPED}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]  # alternate, so drift in the machine's speed cancels
        for name in order:
            stamps = [] if name in steps else None
            times[name]["full"].append(FRAMEWORKS[name](fresh(), x, y, r, stamps))
            times[name]["short"].append(FRAMEWORKS[name](fresh(), xs, ys, r))
            if stamps:  # the mean step of the run, its first step (warm-up) left out
                steps[name].append((stamps[-1] - stamps[1]) / (len(stamps) - 2))
        print(f"  round {r + 1}: " + "  ".join(f"{n} {times[n]['full'][-1]:.3f}s" for n in names), flush=True)
    medians = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    return medians, {n: statistics.median(v) for n, v in steps.items()}


def report(model_name: str, medians: dict[str, dict[str, float]], step_medians: dict[str, float], steps: int,
           short: int, params: int) -> list[dict]:
    """Ratio of whole runs; per-step cost as the slope between the short and the full run (so a run's
    fixed costs, such as writing its folder, do not count per step), and those fixed costs. For the
    time-stamped loops also the mean step between the first and the last (the median of the rounds), and
    strata's own cost a step over the plain loop with the same optimiser: the framework's overhead."""
    def per_step(m):
        return (m["full"] - m["short"]) / (steps - short)

    base = medians["plain"]
    print(f"{model_name} ({params:,} parameters), {steps} steps of {BATCH}, medians:")
    rows = []
    for name, m in medians.items():
        over = (per_step(m) - per_step(base)) * 1e6
        fixed = m["full"] - per_step(m) * steps
        row = {"model": model_name, "framework": name, "seconds": round(m["full"], 4),
               "ratio": round(m["full"] / base["full"], 3), "us_per_step": round(per_step(m) * 1e6, 1),
               "overhead_us_per_step": round(over, 1), "fixed_seconds": round(fixed, 3)}
        line = (f"  {name:<15} {m['full']:7.3f} s  ratio {m['full'] / base['full']:5.3f}  {per_step(m) * 1e6:8.1f} "
                f"us/step (overhead {over:+7.1f})  fixed {fixed:+.3f} s")
        if name in step_medians:
            row["mean_step_us"] = round(step_medians[name] * 1e6, 1)
            line += f"  mean step {step_medians[name] * 1e6:8.1f} us"
        rows.append(row)
        print(line)
    if "strata" in step_medians and "plain-same-opt" in step_medians:
        frame = (step_medians["strata"] - step_medians["plain-same-opt"]) * 1e6
        rows.append({"model": model_name, "framework": "strata", "framework_overhead_us": round(frame, 1)})
        print(f"  strata's framework overhead (mean step against plain-same-opt): {frame:+.1f} us a step")
    return rows


COLD = r"""
import json, resource, sys, time, tempfile
sys.path.insert(0, sys.argv[3])
import torch, peers
x, y = peers.mnist(int(sys.argv[2]))
torch.manual_seed(0)
model = peers.mlp()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = peers.FRAMEWORKS[sys.argv[1]](model, x, y, 0)
print(json.dumps({"seconds": t, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def cold(examples: int, rounds: int) -> list[dict]:
    """The first epoch of the MLP in a new interpreter, plain and strata alternating."""
    here = str(Path(__file__).resolve().parent)
    runs: dict[str, list[dict]] = {"plain": [], "strata": []}
    for r in range(rounds):
        for name in (["plain", "strata"] if r % 2 == 0 else ["strata", "plain"]):
            out = subprocess.run([sys.executable, "-c", COLD, name, str(examples), here], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
            if out.returncode != 0:
                raise SystemExit(f"cold {name} failed:\n{out.stderr}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {n: (statistics.median(v["seconds"] for v in rs), statistics.median(v["faults"] for v in rs))
           for n, rs in runs.items()}
    print(f"cold first epoch of the MLP ({examples} examples) in a new process, median of {rounds}:")
    for n, (s, f) in med.items():
        print(f"  {n:<10} {s:7.3f} s  ratio {s / med['plain'][0]:5.3f}  {f:,.0f} minor page faults")
    return [{"model": "mlp", "framework": n, "cold_seconds": round(s, 3), "minor_faults": int(f)}
            for n, (s, f) in med.items()]


COUNT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import peers
torch.set_num_threads(1)
name, model, first, last = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


class Window(list):
    # the loops' per-step time stamp: callgrind collects from the end of step `first` to the end of `last`
    n = 0

    def append(self, t):
        self.n += 1
        if self.n in (first, last):
            torch._C._valgrind_toggle()


x, y = peers.mnist((last + 5) * peers.BATCH)
torch.manual_seed(0)
peers.FRAMEWORKS[name](peers.MODELS[model](), x, y, 0, Window())
"""

PYTHON_WORK = 200_000  # iterations of the calibration loop


class _Hooked:
    def __init__(self):
        self.step, self.sums = 0, {}

    def record(self, key, value):
        self.step += 1
        self.sums[key] = self.sums.get(key, 0) + value
        return getattr(self, "step") % 7 == 0


def python_work() -> None:
    """Interpreter work of the kind a training loop's own code does: a method call, attribute and dict
    look-ups and updates, arithmetic."""
    h = _Hooked()
    for i in range(PYTHON_WORK):
        h.record("loss", i)


CALIBRATE = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import peers
torch._C._valgrind_toggle()
peers.python_work()
torch._C._valgrind_toggle()
"""


def callgrind(script: str, *args: str) -> int:
    """Instructions that `script` collects between its toggles, run under valgrind's callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no",
                              f"--callgrind-out-file={tmp}/cg.out", sys.executable, "-c", script,
                              str(Path(__file__).resolve().parent), *args],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"callgrind failed:\n{out.stderr[-3000:]}")
        for line in (Path(tmp) / "cg.out").read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit("callgrind wrote no totals")


def instructions(model: str, x, y, rounds: int) -> list[dict]:
    """strata's per-step overhead over plain-same-opt in instructions (deterministic), and in us."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if not shutil.which("valgrind"):
        raise SystemExit("--instructions needs valgrind (Debian: apt install valgrind)")
    first, last = 20, 50
    with ThreadPoolExecutor(2) as pool:  # the two counts at once: each is one single-threaded process
        counts = dict(zip(["plain-same-opt", "strata"],
                          pool.map(lambda n: callgrind(COUNT, n, model, str(first), str(last)),
                                   ["plain-same-opt", "strata"])))
    calib = callgrind(CALIBRATE)
    per_step = {n: c / (last - first) for n, c in counts.items()}
    # the two rates of this machine, timed here in CPU time of this thread (best of several: least disturbed;
    # the whole plain run, so its few fixed costs count as steps: that can only raise the estimate in us)
    python_s = min(_cpu_time(python_work) for _ in range(7))
    torch.manual_seed(0)
    initial = MODELS[model]()
    steps = len(x) // BATCH
    plain_step = min(_cpu_time(lambda: plain_same_opt(copy.deepcopy(initial), x, y, r)) for r in range(rounds)) / steps
    python_ns = python_s / calib * 1e9  # ns an instruction
    plain_ns = plain_step / per_step["plain-same-opt"] * 1e9
    extra = per_step["strata"] - per_step["plain-same-opt"]
    print(f"{model}: instructions a step (callgrind, steps {first + 1}-{last}): plain-same-opt "
          f"{per_step['plain-same-opt']:,.0f}, strata {per_step['strata']:,.0f}: strata's overhead {extra:+,.0f} "
          f"({extra / per_step['plain-same-opt']:+.1%})")
    print(f"  at the interpreter's rate ({calib / PYTHON_WORK:,.0f} instructions in {python_s / PYTHON_WORK * 1e9:.0f} ns "
          f"a calibration iteration, {1 / python_ns:.2f} a ns): {extra * python_ns / 1e3:+.1f} us a step")
    print(f"  at the plain step's rate ({plain_step * 1e6:.0f} us a step, {1 / plain_ns:.2f} a ns): "
          f"{extra * plain_ns / 1e3:+.1f} us a step")
    return [{"model": model, "framework": "strata", "instructions_per_step": round(per_step["strata"]),
             "plain_instructions_per_step": round(per_step["plain-same-opt"]), "overhead_instructions": round(extra),
             "overhead_us_python_rate": round(extra * python_ns / 1e3, 1),
             "overhead_us_plain_rate": round(extra * plain_ns / 1e3, 1)}]


def _cpu_time(fn) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def lockstep(model: str, x, y, rounds: int) -> list[dict]:
    """strata's per-step overhead timed step by step. After each strata step a callback runs one step of
    plain-same-opt on a twin of the model (its own shuffled batches of the same tensors); strata's step is
    timed from the end of one plain step to the start of the next (its loader, its step, its loop and the
    dispatch of this callback) and paired with the plain step that follows it. Interleaved a step apart,
    the two see the same state of the machine (its speed here moves by tens of percent from one second to
    the next, which is what made separate runs of the two loops unresolvable), and each starts from the
    caches the other left. The median of the paired differences is the overhead; one fit a round."""
    import strata
    from strata.config import OptimizerConfig
    from strata.train.optim import build_optimizer

    torch.manual_seed(0)
    initial = MODELS[model]()

    class Lockstep(strata.Callback):
        def __init__(self, seed: int):
            torch.manual_seed(seed + 1000)
            self.perm, self.i = torch.randperm(len(x)), 0
            self.model = copy.deepcopy(initial).train()
            self.opt = build_optimizer(self.model.parameters(), OptimizerConfig("adamw", lr=LR, weight_decay=WD))
            self.plain, self.strata, self.t_out = [], [], None

        def on_batch_end(self, trainer, step, loss):
            t_in = time.perf_counter()
            if self.t_out is not None:
                self.strata.append(t_in - self.t_out)
            idx = self.perm[self.i:self.i + BATCH]
            self.i += BATCH
            out = F.cross_entropy(self.model(x[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            out.backward()
            self.opt.step()
            self.t_out = time.perf_counter()
            self.plain.append(self.t_out - t_in)

    strata_fit(copy.deepcopy(initial), x[: 20 * BATCH], y[: 20 * BATCH], 0, [])  # warm-up
    per_round, pooled, plain_steps = [], [], []
    for r in range(rounds):
        cb = Lockstep(r)
        with tempfile.TemporaryDirectory() as tmp:
            strata.fit(copy.deepcopy(initial), (x, y), epochs=1, batch_size=BATCH, lr=LR, weight_decay=WD,
                       val_split=0, seed=r, run_dir=Path(tmp) / "run", device="cpu", verbose=0, callbacks=[cb])
        diffs = [s - p for s, p in zip(cb.strata, cb.plain[1:])][5:]  # the first steps: warm-up
        per_round.append(statistics.median(diffs))
        pooled += diffs
        plain_steps.append(statistics.median(cb.plain))
        print(f"  round {r + 1}: strata's step {per_round[-1] * 1e6:+.1f} us over the plain step beside it "
              f"(median of {len(diffs)} pairs)", flush=True)
    q1, med, q3 = statistics.quantiles(pooled, n=4)
    print(f"{model}: strata's per-step overhead over plain-same-opt, interleaved step by step: {med * 1e6:+.1f} us "
          f"(median of {len(pooled)} pairs; quartiles {q1 * 1e6:+.1f} / {q3 * 1e6:+.1f}; rounds "
          f"{' '.join(f'{v * 1e6:+.0f}' for v in per_round)}); the plain step {statistics.median(plain_steps) * 1e6:.0f} us")
    return [{"model": model, "framework": "strata", "lockstep_overhead_us": round(med * 1e6, 1),
             "lockstep_quartiles_us": [round(q1 * 1e6, 1), round(q3 * 1e6, 1)],
             "lockstep_rounds_us": [round(v * 1e6, 1) for v in per_round],
             "plain_step_us": round(statistics.median(plain_steps) * 1e6, 1)}]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORKS), default=list(FRAMEWORKS))
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also the first epoch of a new process (plain, strata)")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions a step (valgrind) instead of timing: plain-same-opt and strata")
    ap.add_argument("--lockstep", action="store_true",
                    help="time strata's per-step overhead step by step, interleaved with plain-same-opt")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = available(["plain"] + [n for n in a.frameworks if n != "plain"])  # plain: the ratios' base
    quiet_peers()
    x, y = mnist(a.steps * BATCH)
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    for mod in ("lightning", "keras"):
        if mod in names:
            versions[mod] = __import__(mod).__version__
    print(f"{len(x)} MNIST images in memory, batch {BATCH}, {a.steps} steps, {a.rounds} rounds, 1 thread; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    rows = []
    for m in a.models:
        if a.instructions:
            rows += instructions(m, x, y, a.rounds)
            continue
        if a.lockstep:
            rows += lockstep(m, x, y, a.rounds)
            continue
        params = sum(p.numel() for p in MODELS[m]().parameters())
        short = max(a.steps // 5, 2)
        rows += report(m, *compare(m, x, y, names, a.rounds, short), a.steps, short, params)
    if a.cold:
        rows += cold(a.steps * BATCH, a.rounds)
    if a.out:
        a.out.write_text(json.dumps({"versions": versions, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
