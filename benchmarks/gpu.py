"""Every GPU figure in one run (`benchmarks/gpu.sh` calls this; about 8 minutes on one H100/H200):

1. shakespeare-gpt (recipes/shakespeare-gpt.toml: nanoGPT's shakespeare_char, 10.7 M parameters, 5000
   steps of 64 x 256 tokens) with bf16 and torch.compile, to its validation loss; nanoGPT reports 1.4697
   in about 3 minutes on an A100. Prints the loss, the wall time and the time per step.
2. Model FLOPs utilisation of a GPT-2-small sized model (12 layers, 12 heads, 768 wide, context 1024)
   trained by the strata Trainer with bf16 and compile: achieved FLOP/s over the GPU's peak dense bf16
   FLOP/s, with FLOPs per token = 6 N + 12 L d T (the PaLM paper's appendix B, nanoGPT's estimate_mfu).
   torchtitan reports 33-39 % and nanochat about 46 % on H100.
3. mnist-cnn (recipes/mnist-cnn.toml) epoch time with the data resident on the GPU (the in-memory
   splits are moved to the device once; batches are indexed there).
4. Per-step engine overhead on the GPU: benchmarks/overhead.py's comparison (the MNIST MLP trained by a
   plain PyTorch loop, by the strata Trainer and by strata.fit, alternating rounds), where host overhead
   per step matters most because each step's GPU work is tiny.

    bash benchmarks/gpu.sh                 # on a machine with a CUDA GPU
    bash benchmarks/gpu.sh --smoke         # the same code paths, tiny sizes, on the CPU (about 2 minutes)
    python benchmarks/gpu.py --only mfu    # one part

Needs the data sets tiny-shakespeare and mnist under STRATA_DATA_MIRROR (or in the cache).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from strata.build import load_config  # noqa: E402
from strata.train import Trainer  # noqa: E402
from strata.train.callbacks import Callback  # noqa: E402
from strata.train.progress import Progress  # noqa: E402

PARTS = ("shakespeare", "mfu", "mnist", "overhead")
# Peak dense bf16 tensor-core FLOP/s by device name (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class StepClock(Callback):
    """Wall time of optimiser steps after `warmup` (compilation, autotuning) until the end of the run;
    synchronises the device only at the two ends of the timed span."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def _sync(self, trainer):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    def on_batch_end(self, trainer, step, loss):
        if step == self.warmup:
            self._sync(trainer)
            self.t0 = time.perf_counter()
        elif self.t0 is not None:
            self._sync(trainer) if step == trainer.total_steps else None
            self.t1, self.steps = time.perf_counter(), step - self.warmup

    @property
    def seconds_per_step(self) -> float:
        return (self.t1 - self.t0) / max(self.steps, 1)


class EpochClock(Callback):
    """Wall time of each epoch (its validation included), from the first step's start."""

    def __init__(self):
        self.times, self._t, self.examples = [], None, 0

    def on_fit_start(self, trainer):
        self._t, self.examples = time.perf_counter(), len(trainer.bundle.train)

    def on_epoch_end(self, trainer, metrics):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        now = time.perf_counter()
        self.times.append(now - self._t)
        self._t = now


def train(recipe: str, overrides: list[str], device: str, run_dir: Path, callbacks=()) -> tuple[dict, float]:
    cfg = load_config(ROOT / "recipes" / recipe, overrides)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir=run_dir, device=device, callbacks=callbacks,
                      progress=Progress("lines", 60.0, stream=sys.stdout))
    try:
        summary = trainer.fit()
    finally:
        trainer.dist.teardown()
    return summary, time.perf_counter() - t0


def shakespeare(device: str, smoke: bool, tmp: Path) -> dict:
    sets = ["trainer.compile=true", "trainer.precision=bf16"]
    if smoke:
        sets += ["model.preset=gpt-nano", "data.block_size=32", "data.batch_size=8", "trainer.max_steps=12",
                 "trainer.val_every_n_steps=6", "schedule.warmup_steps=2"]
    clock = StepClock(warmup=2 if smoke else 200)
    summary, wall = train("shakespeare-gpt.toml", sets, device, tmp / "shakespeare", [clock])
    loss = summary.get("best_val/loss", summary.get("val/loss"))
    print(f"[shakespeare-gpt] val/loss {loss:.4f} (target <= 1.47; nanoGPT 1.4697 in about 3 min on an A100), "
          f"{summary['steps']} steps, wall {wall:.1f} s (compile and validation included), "
          f"{clock.seconds_per_step * 1e3:.1f} ms/step after warm-up", flush=True)
    return {"val_loss": loss, "wall_s": wall, "ms_per_step": clock.seconds_per_step * 1e3, "steps": summary["steps"]}


def mfu(device: str, smoke: bool, tmp: Path) -> dict:
    L, d, T, B = (2, 64, 64, 4) if smoke else (12, 768, 1024, 16)
    steps, warmup = (8, 3) if smoke else (120, 40)
    sets = ["model.preset=", f"model.n_layer={L}", f"model.n_head={max(d // 64, 1)}", f"model.dim={d}",
            f"model.context_size={T}", "model.dropout=0.0", f"data.block_size={T}", f"data.batch_size={B}",
            f"data.eval_batch_size={B}", f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={10 * steps}",
            "trainer.compile=true", "trainer.precision=bf16", "trainer.sanity_val_batches=0",
            "schedule.warmup_steps=10", "data.val_fraction=0"]
    clock = StepClock(warmup=warmup)
    cfg_run = tmp / "mfu"
    summary, _ = train("shakespeare-gpt.toml", sets, device, cfg_run, [clock])
    from strata.fitting import load

    model = load(cfg_run, which="last").task.model
    n_params = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if "pos" in n)  # learned positions: no matmul
    flops_per_token = 6 * (n_params - emb) + 12 * L * d * T
    tokens_per_s = B * T / clock.seconds_per_step
    achieved = flops_per_token * tokens_per_s
    peak = peak_flops(torch.device(device))
    share = achieved / peak if peak else float("nan")
    name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    print(f"[mfu] GPT {L} layers x {d} wide, context {T}, batch {B}, {n_params / 1e6:.1f} M parameters: "
          f"{clock.seconds_per_step * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
          f"{achieved / 1e12:.1f} TFLOP/s = MFU {share:.1%} of {name}'s "
          f"{(peak or float('nan')) / 1e12:.0f} TFLOP/s bf16 (torchtitan 33-39 %, nanochat ~46 % on H100)", flush=True)
    return {"mfu": share, "tflops": achieved / 1e12, "tokens_per_s": tokens_per_s}


def mnist(device: str, smoke: bool, tmp: Path) -> dict:
    sets = ["trainer.max_epochs=1" if smoke else "trainer.max_epochs=3"] + (["data.limit=512"] if smoke else [])
    clock = EpochClock()
    summary, wall = train("mnist-cnn.toml", sets, device, tmp / "mnist", [clock])
    n, warm = clock.examples, clock.times[-1]
    print(f"[mnist-cnn] {n:,} training images; epochs (validation included) "
          f"{', '.join(f'{t:.2f}' for t in clock.times)} s, the first with warm-up; {n / warm:,.0f} images/s in the "
          f"last; test acc {summary.get('test/acc', float('nan')):.4f}", flush=True)
    return {"epoch_s": clock.times, "images_per_s": n / warm}


def overhead(device: str, smoke: bool, tmp: Path) -> dict:
    import overhead as oh

    args = ["--device", device] + (["--examples", "1024", "--rounds", "1", "--epochs", "1"] if smoke else
                                   ["--rounds", "5"])
    out = io.StringIO()
    result = oh.main(args, out=out)
    print("[overhead] " + out.getvalue().strip().replace("\n", "\n[overhead] "), flush=True)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: rehearse every code path")
    ap.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    a = ap.parse_args(argv)
    device = a.device or ("cpu" if a.smoke else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device here; rehearse with --smoke")
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"device: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results, t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for part in a.only or PARTS:
            start = time.perf_counter()
            try:
                results[part] = globals()[part](device, a.smoke, Path(tmp))
            except Exception as e:  # one part failing must not cost the others' figures
                traceback.print_exc()
                print(f"[{part}] FAILED: {type(e).__name__}: {e}", flush=True)
            print(f"[{part}] took {time.perf_counter() - start:.1f} s", flush=True)
    print(f"all parts: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
