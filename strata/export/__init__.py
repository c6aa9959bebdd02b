"""`strata export RUN_DIR --format onnx|pt2 [--out FILE]`: a trained run as a standard file that gives
the same answers outside strata, checked when it is written.

The task decides what is exported (`Task.export_graph(batch)`: class logits, a decoder, a generator,
a denoising step; see strata/export/graph.py); this module writes it, runs the written file back on
real inputs of the run's data (test split, else val, else train) at two batch sizes, and for sequence
models two lengths, against the torch model, and keeps it only when the largest absolute difference
is at most TOLERANCE. It is written to a temporary file beside the target and renamed into place:
a failure leaves nothing behind.

Files (default RUN_DIR/export/):
    model.onnx | model.pt2   the graph (weights inside)
    model.onnx.json | model.pt2.json   its preprocessing: the model file's name + `.json`
                                       (strata/export/preprocessing.py), so both formats can sit side by side

An existing file at the target is replaced only when it is an earlier export of strata (the JSON beside
it says so and names it), never a person's own file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from strata.errors import CheckpointError, DataError, StrataError
from strata.run_folder import RunFolder

TOLERANCE = 1e-4  # max |exported - torch| over every output of every checked input
FORMATS = ("onnx", "pt2")
CHECK_SIZES = (4, 7)  # two batch sizes: proves the batch dimension is dynamic

__all__ = ["export_run", "TOLERANCE", "FORMATS"]


def _backend(fmt: str):
    if fmt == "onnx":
        from strata.export import onnx as backend
    elif fmt == "pt2":
        from strata.export import pt2 as backend
    else:
        raise StrataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return backend


def sidecar(model_file: Path) -> Path:
    """The preprocessing JSON that goes with an exported model file."""
    return model_file.with_name(model_file.name + ".json")


def _is_ours(model_file: Path) -> bool:
    """An earlier export of strata: the JSON beside it marks it and names this file."""
    try:
        meta = json.loads(sidecar(model_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "strata_export" in meta and meta.get("model") == model_file.name


def _target(folder: RunFolder, fmt: str, suffix: str, out) -> Path:
    target = folder.export_file(suffix) if out is None else Path(out).expanduser()
    if target.suffix.lower() != suffix:
        raise StrataError(f"--out {target}: --format {fmt} writes a file ending in {suffix}, got "
                          f"'{target.suffix or 'no suffix'}'; e.g. --out {target.with_suffix(suffix).name}")
    if target.is_dir():
        raise StrataError(f"--out {target} is a folder; give a file name ending in {suffix}")
    for path in (target, sidecar(target)):
        if path.exists() and not _is_ours(target):
            raise StrataError(f"{path} exists and is not an export of strata; strata replaces only its own "
                              f"exports, so nothing of yours is overwritten: choose another --out, or move the "
                              f"file away")
    return target


def _halves(batch: dict, n: int) -> list[dict]:
    """Two batches of other sizes from one: its first half, then all of it."""
    first = max(1, n // 2)
    return [{k: v[:first] if torch.is_tensor(v) else v for k, v in batch.items()}, batch]


def real_batches(run, inputs=None) -> tuple[str, list[dict]]:
    """(where the inputs came from, two batches of other sizes): the given inputs (file paths or
    sentences as `strata predict` reads them, or arrays as `run.predict` takes them), else
    CHECK_SIZES examples of the run's own data, as training saw them."""
    from strata.data import load_data
    from strata.train.loader import EpochBatches

    if inputs is not None:
        batch = run._encode(inputs)
        n = len(next(v for v in batch.values() if torch.is_tensor(v)))
        if n < 2:
            raise StrataError(f"--inputs: an export is checked at two batch sizes, so give at least 2 examples, got {n}")
        return "given", _halves(batch, n)
    if run.cfg.data.name == "python":
        raise StrataError("this run was trained on arrays or a Dataset given from Python, which strata cannot read "
                          "again, and an export is checked on real inputs: give some, as predict takes them "
                          "(run.export(inputs=x_test[:8]) in Python, or --inputs FILE.npy on the command line)")
    try:
        bundle = load_data(run.cfg.data)
    except DataError as e:
        raise StrataError(f"an export is checked on real inputs of the run's data, which cannot be read: {e}; "
                          "or give some with --inputs") from None
    for name in ("test", "val", "train"):
        data = getattr(bundle, name)
        if data is not None and len(data) > 0:
            break
    batches = []
    for i, size in enumerate(CHECK_SIZES):
        loader = EpochBatches(data, size, False, 0, torch.device("cpu"), collate=bundle.collate)
        chunks = [b for _, b in loader.epoch(0)]
        batches.append(chunks[min(i, len(chunks) - 1)])  # the second batch: other examples where there are
    return name, batches


def _max_diff(graph_module, run_exported, inputs: list[tuple]) -> tuple[float, list[list[list[int]]]]:
    """(max |exported - torch| over all outputs of all inputs, each input's output shapes)."""
    worst, shapes = 0.0, []
    for args in inputs:
        with torch.no_grad():
            ref = graph_module(*args)
        ref = [r.detach().float().cpu().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        try:
            got = run_exported(*args)
        except Exception as e:  # the runtime refuses an input the trace fixed a dimension of
            from strata.export.pt2 import reason

            raise StrataError(f"the exported model fails on a real input of shapes {[list(a.shape) for a in args]} "
                              f"({reason(e)}): a dimension was fixed at export; no file was kept") from None
        if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
            raise StrataError(f"the exported model gives outputs of shapes {[list(g.shape) for g in got]}, torch "
                              f"{[list(r.shape) for r in ref]}, on a real input of shapes "
                              f"{[list(a.shape) for a in args]}: a dimension was fixed at export; no file was kept")
        for g, r in zip(got, ref):
            d = np.abs(g.astype(np.float64) - r.astype(np.float64))
            worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max(initial=0.0)))
        shapes.append([list(r.shape) for r in ref])
    return worst, shapes


def export_run(run_dir, fmt: str = "onnx", out=None, which: str = "best", model=None, inputs=None) -> dict:
    """Write the run's model as `fmt` at `out` (default RUN_DIR/export/model.<fmt>) with its
    preprocessing JSON beside it; check it on real inputs; return what was written and measured.
    model: the user's module instance, for a run of a class a new process cannot import (as strata.load).
    inputs: real inputs to check on instead of the run's data (needed for a run trained on arrays from
    Python): file paths or sentences as `strata predict` takes them, or arrays as `run.predict` does."""
    from strata.fitting import load
    from strata.export.preprocessing import describe

    t0 = time.perf_counter()
    backend = _backend(fmt)
    folder = RunFolder(run_dir).require()
    if not (folder.has_checkpoint("best") or folder.has_checkpoint("last")):
        raise CheckpointError(f"run folder {folder.path} has no checkpoint (checkpoints/best or checkpoints/last) "
                              "to export; train it first, or give a finished run folder")
    target = _target(folder, fmt, backend.SUFFIX, out)
    run = load(folder.path, model=model, which=which, device="cpu")
    split, (first, second) = real_batches(run, inputs)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # a generator's latent inputs are drawn: the same check for the same run
        graph = run.task.export_graph(first)
        inputs = [graph.args, *graph.variants, run.task.export_graph(second).args]

    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_json = target.with_name(f".{sidecar(target).name}.{os.getpid()}.tmp")
    try:
        backend.write(graph, tmp)
        diff, shapes = _max_diff(graph.module, backend.runner(tmp), inputs)
        checked = {"max_abs_diff": diff, "tolerance": TOLERANCE, "split": split,
                   "examples": sum(len(a[0]) for a in inputs), "inputs": [[list(t.shape) for t in a] for a in inputs]}
        if not diff <= TOLERANCE:
            raise StrataError(f"the exported model differs from torch by up to {diff:.3g} on real {split} inputs "
                              f"(allowed: {TOLERANCE:g}); no file was kept. Export with --which last, or report it")
        meta = describe(run, graph, fmt, target.name, shapes, checked)
        tmp_json.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, target)
        os.replace(tmp_json, sidecar(target))
    except BaseException:
        for p in (tmp, tmp_json):
            p.unlink(missing_ok=True)
        for p in made:  # folders this export created, when nothing else is in them
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return {"format": fmt, "out": str(target), "max_abs_diff": diff, "checked_examples": checked["examples"],
            "preprocessing": str(sidecar(target)), "graph": graph.describe, "inputs": meta["inputs"],
            "outputs": meta["outputs"], "checkpoint": run.checkpoint, "seconds": round(time.perf_counter() - t0, 2)}
