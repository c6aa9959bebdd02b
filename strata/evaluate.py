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
from strata.run_folder import RunFolder
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


def explain_run(run_dir, inputs: list[str], method: str = "integrated_gradients", target=None, steps: int = 32,
                out=None, top: int = 10, device: str | None = None) -> list[dict]:
    """Attribute a run's score for each input to the input's pixels or features (strata/explain).
    Images: a PNG at `out` (default RUN_DIR/explain.png) with one row per input (the input, then
    red where it raises the score and blue where it lowers it). Other inputs: the `top` features by
    |attribution| in each result."""
    from strata.data.images import apply_normalize
    from strata.explain.attributions import METHODS, attribute, heatmap
    from strata.report.grid import save_grid

    if method not in METHODS:
        raise StrataError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1024:
        raise StrataError(f"--steps must be a whole number from 1 to 1024, got {steps!r}")
    run, batch = _run_and_inputs(run_dir, inputs, device)
    task = run.task.eval()
    x = batch[task.input_key]
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise StrataError("attributions need real-valued inputs (images, table rows, audio frames, time series); "
                          "this run reads token ids")
    with torch.no_grad():
        scores = task.explain_scores(x).float()
    names = task.explain_names()
    k = scores.shape[1]
    if target is None:
        t = scores.argmax(1)
    else:
        idx = names.index(target) if target in names else (int(target) if str(target).lstrip("-").isdigit() else None)
        if idx is None or not 0 <= idx < k:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise StrataError(f"--target must be a score index 0..{k - 1}" + (f" or a name ({shown})" if names else "")
                              + f", got {target!r}")
        t = torch.full((len(x),), idx, dtype=torch.long, device=x.device)
    image = x.dim() == 4
    baseline = apply_normalize(torch.zeros_like(x).cpu(), run.info.get("normalize")).to(x.device) \
        if image and isinstance(run.info.get("normalize"), dict) else None
    attr, gap = attribute(method, task.explain_scores, x, t, baseline=baseline, steps=steps)
    shape = tuple(attr.shape[1:])
    columns, feature_names = run.info.get("inputs") or [], run.info.get("feature_names") or []
    if len(shape) == 2 and len(columns) == shape[1]:  # time series: (time steps, columns)
        label = lambda f: f"{columns[f % shape[1]]} at step {f // shape[1] - shape[0]}"  # noqa: E731
    elif len(shape) == 1 and len(feature_names) == shape[0]:  # table rows
        label = lambda f: feature_names[f]  # noqa: E731
    else:
        label = lambda f: str(list(map(int, torch.unravel_index(torch.tensor(f), shape))))  # noqa: E731
    results = []
    for i, inp in enumerate(example_labels(inputs, len(x))):
        j = int(t[i])
        r = {"input": inp, "target": names[j] if j < len(names) else j, "score": round(float(scores[i, j]), 6),
             "method": method, "attribution_sum": round(float(attr[i].sum()), 6)}
        if gap is not None:
            r["completeness_gap"] = round(float(gap[i]), 6)  # f(x) - f(baseline) - sum; small: steps suffice
        if not image:
            flat = attr[i].flatten()
            order = flat.abs().argsort(descending=True)[:top].tolist()
            r["top"] = [{"feature": label(f), "attribution": round(float(flat[f]), 6)} for f in order]
        results.append(r)
    if image:
        shown = x.detach().cpu()
        stats = run.info.get("normalize")
        if isinstance(stats, dict):  # back to [0, 1] for display
            shape = (1, -1, 1, 1)
            shown = shown * torch.tensor(stats["std"]).view(shape) + torch.tensor(stats["mean"]).view(shape)
        path = save_grid(heatmap(shown, attr.cpu()), out or RunFolder(run_dir).artefact("explain.png"), nrow=2)
        for r in results:
            r["out"] = str(path)
    return results
