"""Where to look inside a network: its stages, found from the module tree, and their outputs, caught
with forward hooks.

The rule is structural, so it serves the shipped models, the `sequential` layer list and a person's
own module alike:
- the backbone is the nn.Sequential / nn.ModuleList with the most children that hold parameters,
  normalisation layers aside, the first of equals in named_modules order (the cnn's `stages`, the
  resnet's `blocks`, a transformer's `blocks`, a layer list's `layers`); its children are stages,
  and so are the model's own children before and after it (a stem, an embedding, a fully connected
  neck, the head); when no container has two, the model's own children are the stages (an RNN's
  embedding and recurrent encoder, a person's conv1 / conv2 / fc);
- a stage is one child with parameters and the children after it that have none or normalise
  (norm, activation, pooling, dropout, flatten), caught at its last one: a layer list's conv, tanh,
  avgpool is one stage; each layer of a stacked torch RNN (nn.LSTM(num_layers=2)) is a stage;
- the model's output closes the list ("output"), unless the last stage already is it.

A stage's output is summarised per example ("pooled") for the linear probe: feature maps are
average-pooled to the finest grid that keeps at most `max_features` numbers (a 28x28 image keeps all
784 pixels), sequences are averaged over their real (non-padding) steps, vectors are kept as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strata.errors import StrataError
from strata.registry import closest

OUTPUT = "output"  # the name of the model's own output among the stages
CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class Stage:
    name: str  # where its output is caught: a module name from named_modules, or "output"
    module: nn.Module
    kind: str  # what it is made of, e.g. "Conv2d+Tanh+AvgPool2d"
    layer: int | None = None  # one layer of a stacked torch RNN (module), recomputed from its input


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _opens_stage(m: nn.Module) -> bool:
    """A child with parameters of its own computation; a normalisation layer joins the one before it."""
    return _has_params(m) and not isinstance(m, NORMS)


def backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the container whose children are the stages (see the module docstring)."""
    best, best_n = ("", model), 0
    for name, m in model.named_modules():
        if isinstance(m, CONTAINERS):
            n = sum(_opens_stage(c) for c in m.children())
            if n > best_n:  # ties: the first in named_modules order, the shallowest on its branch
                best, best_n = (name, m), n
    own = sum(_opens_stage(c) for c in model.children())
    return best if best_n >= 2 or (best_n >= 1 and own <= 1) else ("", model)


def _grouped(children) -> list[list[tuple[str, nn.Module]]]:
    """(name, module) children in stages: each with parameters (but a norm) opens one; a list that
    starts without one (a final norm, a pooling head) keeps only the groups that compute."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, child in children:
        if type(child).forward is nn.Module.forward:
            continue  # a plain ModuleList / ModuleDict is never called: its members are reached otherwise
        if not groups or _opens_stage(child):
            groups.append([])
        groups[-1].append((name, child))
    return [g for g in groups if any(_opens_stage(m) for _, m in g)]


def _groups(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The stages' groups: the model's own children, the one holding the backbone replaced by the
    backbone's children (the cnn: stages.0, stages.1, then neck and head)."""
    prefix, parent = backbone(model)
    if parent is model:
        return _grouped(model.named_children())
    top = prefix.split(".")[0]
    names = [n for n, _ in model.named_children()]
    before = [(n, c) for n, c in model.named_children() if names.index(n) < names.index(top)]
    after = [(n, c) for n, c in model.named_children() if names.index(n) > names.index(top)]
    return _grouped(before) + _grouped((f"{prefix}.{n}", c) for n, c in parent.named_children()) + _grouped(after)


def stages(model: nn.Module, run) -> list[Stage]:
    """The stages of `model` in the order they run, the output last; `run()` calls the model once on
    a small batch. A stage is caught at the last member of its group that runs once per call and
    keeps the rank of the group's first output: a dropout or pooling module reused later in forward
    (an RNN's dropout before its head) would hand over its later output, and a flatten would turn
    feature maps into a vector."""
    groups = _groups(model)
    calls: dict[int, int] = {}
    order: list[int] = []
    ranks: dict[int, int] = {}

    def count(module, inputs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if id(module) not in order:
            order.append(id(module))
        t = first_tensor(output)
        ranks[id(module)] = t.dim() if t is not None else -1

    mods = {id(m): m for g in groups for _, m in g}
    handles = [m.register_forward_hook(count) for m in mods.values()]
    with Catch([Stage(OUTPUT, model, "")]) as caught:
        try:
            with torch.no_grad():
                run()
        finally:
            for h in handles:
                h.remove()
    found = []
    for g in groups:
        ran = [(n, m) for n, m in g if calls.get(id(m))]
        if not ran:
            continue  # built but never called
        # not past a flatten either: a stage of feature maps is caught as feature maps
        once = [(n, m) for n, m in g if calls.get(id(m)) == 1 and ranks[id(m)] == ranks[id(ran[0][1])]]
        name, module = once[-1] if once else ran[0]
        found.append((order.index(id(ran[0][1])), Stage(name, module, describe([m for _, m in g]))))
    found = [layer for _, s in sorted(found, key=lambda p: p[0]) for layer in rnn_layers(s)]
    out = caught.outputs.get(OUTPUT)
    if found and out is not None:
        with Catch(found[-1:]) as last:
            with torch.no_grad():
                run()
        t = last.outputs.get(found[-1].name)
        if t is not None and t.shape == out.shape and torch.equal(t, out):
            return found  # the last stage is the output (a layer list ending in its linear layer)
    return found + [Stage(OUTPUT, model, OUTPUT)]


def describe(group: list[nn.Module]) -> str:
    """What a stage is made of, e.g. "Conv2d+Tanh+AvgPool2d", "Conv2d x2+MaxPool2d", "Block": a module of
    a person's (or a model file's) own class by its name, torch's layers one by one, repeats counted."""
    names: list[str] = []
    for m in group:
        own = not type(m).__module__.startswith("torch.") and not isinstance(m, CONTAINERS)
        if own or not list(m.children()):
            if not isinstance(m, (nn.Identity, nn.Dropout)):  # nothing, or nothing in evaluation
                names.append(type(m).__name__)
        else:
            names += [type(leaf).__name__ for leaf in m.modules() if not list(leaf.children())
                      and not isinstance(leaf, (nn.Identity, nn.Dropout, *NORMS))]
    out: list[list] = []
    for n in names:
        if out and out[-1][0] == n:
            out[-1][1] += 1
        else:
            out.append([n, 1])
    return "+".join(n if k == 1 else f"{n} x{k}" for n, k in out)


def named_stage(model: nn.Module, name: str) -> Stage:
    """The module called `name` in named_modules ("output": the model itself); an unknown name is an
    error that suggests the closest and lists some."""
    if name == OUTPUT:
        return Stage(OUTPUT, model, OUTPUT)
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        names = list(modules)
        shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all)" if len(names) > 15 else "")
        raise StrataError(f"--layers: this model has no layer '{name}'{closest(name, names)}; its layers: {shown} "
                          f"(and '{OUTPUT}', the model's output); leave --layers out for its stages")
    return Stage(name, modules[name], type(modules[name]).__name__)


def first_tensor(out):
    """A module's output tensor: the first element of a tuple (an RNN's (outputs, state)), a packed
    sequence padded again (B, T, H)."""
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    while isinstance(out, (tuple, list)) and out and not isinstance(out, PackedSequence):
        out = out[0]
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out, batch_first=True)[0]
    return out if torch.is_tensor(out) else None


RNNS = (nn.LSTM, nn.GRU, nn.RNN)


def layer_outputs(rnn: nn.RNNBase, x) -> list:
    """Each layer's outputs of a stacked torch RNN for its input x (a tensor or a packed sequence), by
    running one single-layer RNN per layer with that layer's weights (dropout between layers is off
    in evaluation, so the top layer's equal the RNN's own)."""
    base = next(c for c in type(rnn).__mro__ if c in RNNS)
    extra = {"nonlinearity": rnn.nonlinearity} if base is nn.RNN else {}
    outs = []
    for k in range(rnn.num_layers):
        size = rnn.input_size if k == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
        one = base(size, rnn.hidden_size, 1, bias=rnn.bias, batch_first=rnn.batch_first,
                   bidirectional=rnn.bidirectional, **extra).to(next(rnn.parameters()).device)
        weights = {n.replace(f"_l{k}", "_l0"): p for n, p in rnn.named_parameters()
                   if n.endswith(f"_l{k}") or n.endswith(f"_l{k}_reverse")}
        one.load_state_dict(weights)
        x = one(x)[0]
        outs.append(x)
    return outs


def _packed(inputs: tuple):
    """An RNN's input; packed when the module was also given the lengths (the layer list's LSTM)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    x = inputs[0]
    if len(inputs) > 1 and torch.is_tensor(inputs[1]) and inputs[1].dim() == 1 and torch.is_tensor(x) \
            and x.dim() == 3:
        return pack_padded_sequence(x, inputs[1].detach().cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
    return x


def rnn_layers(stage: Stage) -> list[Stage]:
    """A stage holding one stacked torch RNN (an RNN classifier's encoder) as one stage per layer."""
    inner = [(n, m) for n, m in stage.module.named_modules() if isinstance(m, RNNS)]
    if len(inner) != 1 or inner[0][1].num_layers < 2 or getattr(inner[0][1], "proj_size", 0):
        return [stage]
    sub, rnn = inner[0]
    name = f"{stage.name}.{sub}" if sub else stage.name
    return [Stage(f"{name}[{k}]", rnn, f"{type(rnn).__name__} layer {k + 1}", layer=k) for k in range(rnn.num_layers)]


class Catch:
    """Forward hooks that keep each stage's latest output while the context is open:
    `with Catch(stages) as caught: model(x)`, then caught.outputs[name]."""

    def __init__(self, stages_: list[Stage], detach: bool = True):
        self.stages, self.detach = stages_, detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, stage: Stage):
        def hook(module, inputs, output):
            if stage.layer is not None:
                output = layer_outputs(module, _packed(inputs))[stage.layer]
            t = first_tensor(output)
            if t is None:
                return
            self.outputs[stage.name] = t.detach() if self.detach else t
        return hook

    def __enter__(self) -> "Catch":
        self.outputs.clear()
        self._handles = [s.module.register_forward_hook(self._hook(s)) for s in self.stages]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


def pooled(t: torch.Tensor, lengths: torch.Tensor | None, in_steps: int | None, max_features: int) -> torch.Tensor:
    """One stage's output (B, ...) -> (B, D) features for the probe (see the module docstring)."""
    t = t.detach().float()
    if t.dim() == 4:  # (B, C, H, W)
        c, h, w = t.shape[1:]
        side = max(1, min(h, w, math.isqrt(max(1, max_features // c))))
        if side < h or side < w:
            t = F.adaptive_avg_pool2d(t, (min(side, h), min(side, w)))
        return t.flatten(1)  # (B, C * side * side)
    if t.dim() == 3:  # (B, T, C): the mean over real steps
        T = t.shape[1]
        if lengths is None:
            return t.mean(1)
        # a stage may prepend tokens (a [CLS] token: T = in_steps + 1) or cut the sequence to its context
        extra = max(T - (in_steps or T), 0)
        n = (lengths.to(t.device) + extra).clamp(1, T)  # (B,)
        keep = (torch.arange(T, device=t.device)[None, :] < n[:, None]).to(t.dtype)[..., None]  # (B, T, 1)
        return (t * keep).sum(1) / n[:, None].to(t.dtype)
    return t.flatten(1)


def conv2d_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
