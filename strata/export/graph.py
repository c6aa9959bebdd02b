"""What a task hands the exporter: a module computing plain tensors -> tensors, real example inputs
from the run's data, the names and dynamic dimensions of its inputs, and what its outputs mean.

A task builds one in `Task.export_graph(batch)` (strata/tasks/base.py); the exporter never asks
which family it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

BATCH, SEQUENCE = "batch", "sequence"  # the names of dynamic dimensions


@dataclass
class ExportGraph:
    module: nn.Module  # forward(*args) -> a tensor or a tuple of tensors, in eval mode
    args: tuple[torch.Tensor, ...]  # model inputs computed from a real batch of the run's data
    input_names: list[str]
    output_names: list[str]
    describe: str  # one line: "class logits", "the denoising step's predicted noise", ...
    # input name -> {dimension: BATCH | SEQUENCE}; every other dimension is fixed
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    sequence_range: tuple[int, int] = (1, 4096)  # the lengths a SEQUENCE dimension may take
    # more real inputs of the same batch checked as well (a shorter sequence: proves the dynamic length)
    variants: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    # how an output becomes `strata predict`'s answer (softmax + class names, a threshold, units)
    postprocess: dict = field(default_factory=dict)
    # what the inputs are when they are not the data set's raw inputs (a latent vector, a noisy image);
    # None: the data set's own encoding (strata/export/preprocessing.py)
    preprocess: dict | None = None

    def __post_init__(self):
        self.module.eval()
        # own copies: a slice of a batch is a view whose base's shape the tracer would see
        self.args = tuple(a.detach().clone() for a in self.args)
        self.variants = [tuple(a.detach().clone() for a in v) for v in self.variants]
        if len(self.args) != len(self.input_names):
            raise ValueError(f"{len(self.args)} example inputs but {len(self.input_names)} input names")


def batch_only(names: list[str]) -> dict[str, dict[int, str]]:
    """Every input's first dimension is the batch; nothing else moves."""
    return {n: {0: BATCH} for n in names}


class Outputs(nn.Module):
    """A module whose forward is `fn(*args)`, for outputs computed by a task from its models
    (a decoder's image, a generator's [0, 1] pixels): `fn` closes over registered submodules."""

    def __init__(self, fn, **modules: nn.Module):
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, *args):
        return self.fn(*args)


def next_token_graph(model: nn.Module, tokens: torch.Tensor, context: int | None) -> ExportGraph:
    """A language model's forward (the protocol of strata.nn.sampling: model(tokens) -> (logits,
    state)) without its state: tokens (B, T) -> next-token logits (B, T, V), with the batch and the
    length dynamic up to the model's context. The first half of the tokens is checked as well."""
    model = model.for_export() if hasattr(model, "for_export") else model  # a recurrent net's traceable form
    return ExportGraph(Outputs(lambda t: model(t)[0], model=model), (tokens,), ["tokens"], ["logits"],
                       "next-token logits at every position", {"tokens": {0: BATCH, 1: SEQUENCE}},
                       sequence_range=(2, context or 4096), variants=[(tokens[:-1, : max(2, tokens.shape[1] // 2)],)],
                       postprocess={"logits": "(B, T, V): softmax(logits[:, -1] / temperature) is the next token's "
                                              "distribution; the tokenizer decodes ids"})
