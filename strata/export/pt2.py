"""torch.export: an ExportedProgram saved with torch.export.save, loaded back with torch.export.load
(plain PyTorch, no strata, no Python source of the model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from strata.errors import StrataError
from strata.export.graph import BATCH, SEQUENCE, ExportGraph

SUFFIX = ".pt2"


def dims(graph: ExportGraph) -> tuple[dict[int, torch.export.Dim], ...]:
    """dynamic_shapes for torch.export, one entry per input in order: one Dim per name (the batch,
    the sequence), shared by every input that carries it."""
    import inspect

    lo, hi = graph.sequence_range
    shared = {BATCH: torch.export.Dim("batch", min=1), SEQUENCE: torch.export.Dim("sequence", min=lo, max=hi)}
    specs = tuple({d: shared[kind] for d, kind in graph.dynamic.get(name, {}).items()} for name in graph.input_names)
    params = inspect.signature(graph.module.forward).parameters.values()
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return (specs,) if varargs else specs  # forward(*args) takes all inputs as its one argument


def reason(e: BaseException) -> str:
    """The first line of the innermost cause: what the tracer could not handle."""
    while e.__cause__ is not None:
        e = e.__cause__
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    if "Constraints violated" in first:
        kinds = [k for k in (BATCH, SEQUENCE) if f"({k})" in first or f" {k}" in first]
        return (f"the traced graph fixes the {' and '.join(kinds) or 'input'} dimension that must stay free: a loop "
                "over it is unrolled at the example's size, as torch.export does with recurrent layers")
    return f"{type(e).__name__}: {first}"[:300]


def write(graph: ExportGraph, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on attributes set while tracing
            program = torch.export.export(graph.module, graph.args, dynamic_shapes=dims(graph))
        torch.export.save(program, str(path))
    except Exception as e:  # torch.export's errors name the unsupported construct on the first line
        raise StrataError(f"torch.export cannot trace this run's model ({reason(e)}); try --format onnx, or "
                          "report the model's layers") from None


def runner(path: Path):
    module = torch.export.load(str(path)).module()

    def run(*args: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*args)
        return [o.detach().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run
