"""ONNX: torch.onnx's dynamo exporter (torch.export -> ONNX), run back with ONNX Runtime on the CPU."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from strata.errors import StrataError
from strata.export.graph import ExportGraph
from strata.export.pt2 import dims, reason

SUFFIX = ".onnx"


def write(graph: ExportGraph, path: Path) -> None:
    """The graph as one self-contained ONNX file (weights inside) at `path`."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on deprecated pytree classes
            program = torch.onnx.export(graph.module, graph.args, dynamo=True, input_names=graph.input_names,
                                        output_names=graph.output_names, dynamic_shapes=dims(graph),
                                        optimize=True, verbose=False, report=False)
        program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises its own error types, from any of its three stages
        raise StrataError(f"the ONNX exporter cannot convert this run's model ({reason(e)}); "
                          "try --format pt2, or report the model's layers") from None


def runner(path: Path):
    """(*tensors) -> list of numpy outputs, through ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*args: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, args)})

    return run

