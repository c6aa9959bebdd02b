"""A torch.nn.Sequential that a run config can describe: `layers` is a list of tables, each a layer's
class (a "module:QualName" spec, e.g. "torch.nn.modules.linear:Linear") and its constructor
arguments. strata.fit records a user's nn.Sequential of such layers this way, so `strata.load` and
`strata predict` rebuild it in a new process; the parameter names (0.weight, 1.bias, ...) are those of
the nn.Sequential it describes, so its checkpoints load as they are."""

from __future__ import annotations

from torch import nn


class Stack(nn.Sequential):
    def __init__(self, layers: list):
        from strata.models.user import load_class

        super().__init__(*(load_class(layer["name"])(**{k: v for k, v in layer.items() if k != "name"})
                           for layer in layers))
        self.layers = layers
