"""Using a trained run: evaluate it, predict with it, generate from it, summarise a config's model."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from strata.api import load_run
from strata.build import resolve_config
from strata.data import DATASETS, load_data
from strata.device import pick_device
from strata.errors import MISFIT_ERRORS, StrataError, model_misfit
from strata.explain.run import explain_run  # noqa: F401  (`strata explain`, the server's /explain)
from strata.train.evaluation import evaluate
from strata.train.loader import EpochBatches, to_device


def evaluate_run(run_dir, split: str = "test", device: str | None = None) -> dict:
    dev = pick_device(device or "auto")
    run = load_run(run_dir, device=dev)
    bundle = load_data(run.cfg.data)
    data = getattr(bundle, split)
    if data is None or len(data) == 0:
        raise StrataError(f"data set '{run.cfg.data.name}' has no {split} split; try --split "
                          f"{'val' if split == 'test' else 'test'}")
    t0 = time.perf_counter()
    bs = run.cfg.data.eval_batch_size or 2 * run.cfg.data.batch_size
    out = evaluate(run.task, data, split, bs, dev, bundle.collate)
    out.update({f"{split}/{k}": v for k, v in run.task.evaluate_report(bundle, split, run.run_dir).items()})
    out.update({"examples": len(data), "checkpoint": run.checkpoint, "seconds": round(time.perf_counter() - t0, 3)})
    return out


def example_labels(inputs: list[str], n: int) -> list[str]:
    """A label per example: the inputs themselves, or 'row k' when files held several rows each."""
    return list(inputs) if len(inputs) == n else [f"row {i + 1}" for i in range(n)]


def _run_and_inputs(run_dir, inputs: list[str], device: str | None):
    """The trained run and the user's inputs encoded as its data set encodes them, on one device."""
    dev = pick_device(device or "auto")
    run = load_run(run_dir, device=dev)
    spec = DATASETS.get(run.cfg.data.name)
    return run, to_device(spec.encode_inputs(list(inputs), run.info, Path(run_dir)), dev)


def predict_run(run_dir, inputs: list[str], device: str | None = None) -> list[dict]:
    run, batch = _run_and_inputs(run_dir, inputs, device)
    with torch.no_grad():
        return run.task.predict_step(batch)


def recommend_run(run_dir, request: dict, inputs=(), device: str | None = None) -> dict:
    """`strata predict RUN_DIR --user U [--item I] [--top N]` on a rating or ranking run."""
    if inputs:
        raise StrataError(f"--user / --item / --top take no inputs; got {' '.join(inputs)}")
    run = load_run(run_dir, device=pick_device(device or "auto"))
    return run.task.recommend(request, Path(run_dir))


def generate_run(run_dir, request: dict, device: str | None = None) -> dict:
    dev = pick_device(device or "auto")
    run = load_run(run_dir, device=dev)
    with torch.no_grad():
        return run.task.generate(request, Path(run_dir))


def model_summary(config, overrides=()) -> tuple[list[dict], int]:
    """Every leaf module in call order, with its output shape and own parameter count."""
    from strata.train.budget import build_within_memory

    cfg = resolve_config(config, overrides)
    bundle = load_data(cfg.data)
    try:
        task = build_within_memory(cfg, bundle.info, torch.device("cpu"), copies=1).eval()
    except MISFIT_ERRORS as e:
        raise model_misfit(cfg, e) from e
    _, batch = next(EpochBatches(bundle.train, 2, False, 0, torch.device("cpu"), collate=bundle.collate).epoch(0))
    rows, names = [], {m: n for n, m in task.named_modules()}

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        shape = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        rows.append({"name": names.get(module, "?"), "type": type(module).__name__, "output_shape": shape,
                     "params": sum(p.numel() for p in module.parameters(recurse=False))})

    handles = [m.register_forward_hook(hook) for m in task.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            task.validation_step(batch)
    except MISFIT_ERRORS as e:
        raise model_misfit(cfg, e) from e
    finally:
        for h in handles:
            h.remove()
    return rows, sum(p.numel() for p in task.parameters())
