"""Sanity checks for attributions (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps"),
the two a method must pass before its pictures mean anything about the model:

- `randomisation_check`: the attributions of the trained model and of the same network with its
  weights re-initialised must differ. Spearman's rank correlation between the two, per example,
  averaged; a method that returns nearly the same map for a random network is showing the input
  (edges, ink), not what the model learned. Layers are re-initialised all at once, or cascading
  from the top (the output layer first, then one more layer each step, down to the input).
- `deletion_check`: setting the k features ranked first by a method to the baseline (black pixels,
  a table's training means, pad tokens) must cost the explained score more than setting k random
  features to it (mean over several draws). Only features that differ from the baseline count:
  removing a pixel that is already black removes nothing.

Both take a task (a trained run's `run.task`) and a batch of its inputs as `strata explain` reads
them (`task.explain_args(batch)`); text is attributed per token.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from strata.explain.run import attributions, input_kind


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two 1-D tensors (ties share their mean rank); nan when one is constant."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.double().numpy())).double()
    rb = torch.from_numpy(rankdata(b.double().numpy())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _valid(task, x: torch.Tensor, args: tuple, width: int) -> torch.Tensor:
    """(B, N) True at features that exist: a text's real tokens (before its length), else every feature."""
    if input_kind(task.info) == "text" and args:
        return torch.arange(width, device=x.device)[None, :] < args[0][:, None].to(x.device)
    return torch.ones(len(x), width, dtype=torch.bool, device=x.device)


def _target(task, x: torch.Tensor, args: tuple, target) -> torch.Tensor:
    if target is not None:
        return torch.as_tensor(target, device=x.device).long().expand(len(x))
    with torch.no_grad():
        return task.explain_scores(x, *args).argmax(1)


def _reinit(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    module.reset_parameters()


def _layers(task: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with their own re-initialisable parameters, input side first (definition order)."""
    return [(n, m) for n, m in task.named_modules()
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


def randomisation_check(task, x: torch.Tensor, method: str = "integrated_gradients", args: tuple = (),
                        target=None, layers: str = "all", steps: int = 32, baseline: torch.Tensor | None = None,
                        seed: int = 0) -> dict:
    """{"spearman": mean over examples of Spearman's rho between the trained and the re-initialised
    network's attributions (signed), "spearman_abs": the same on |attributions|, "layers": "all" or
    "cascade", "cascade": [(layer, rho), ...] when cascading (rho after re-initialising that layer and
    every layer above it; the last entry equals "all")}. `target` defaults to the trained model's
    predicted score, kept for the randomised network."""
    was_training = task.training
    task.eval()
    t = _target(task, x, args, target)
    trained, _ = attributions(task, x, t, method, args, steps, baseline)
    trained = trained.flatten(1).cpu()
    valid = _valid(task, x, args, trained.shape[1]).cpu()

    def compare(other: nn.Module) -> tuple[float, float]:
        attr, _ = attributions(other, x, t, method, args, steps, baseline)
        attr = attr.flatten(1).cpu()
        rho = [(_spearman(a[v], b[v]), _spearman(a[v].abs(), b[v].abs())) for a, b, v in zip(trained, attr, valid)]
        signed = torch.tensor([r[0] for r in rho]).nanmean()
        unsigned = torch.tensor([r[1] for r in rho]).nanmean()
        return float(signed.nan_to_num(0.0)), float(unsigned.nan_to_num(0.0))

    random = copy.deepcopy(task).eval()
    stack = _layers(random)
    out: dict = {"layers": layers}
    if layers == "cascade":
        out["cascade"] = []
        for i, (name, m) in enumerate(reversed(stack)):
            _reinit(m, seed + i)
            out["cascade"].append((name, compare(random)[0]))
    elif layers == "all":
        for i, (_, m) in enumerate(stack):
            _reinit(m, seed + i)
    else:
        raise ValueError(f"layers must be 'all' or 'cascade', got {layers!r}")
    out["spearman"], out["spearman_abs"] = compare(random)
    task.train(was_training)
    return out


def deletion_check(task, x: torch.Tensor, method: str = "integrated_gradients", k: int = 4, args: tuple = (),
                   target=None, baseline: torch.Tensor | None = None, draws: int = 5, steps: int = 32,
                   seed: int = 0) -> dict:
    """{"top_drop": mean drop of the explained score when each example's k highest-attributed features are
    set to the baseline, "random_drop": the same for k random features (mean over `draws`), "k"}.
    Features already equal to the baseline are never chosen (pads, for text, are the baseline)."""
    was_training = task.training
    task.eval()
    t = _target(task, x, args, target)
    attr, _ = attributions(task, x, t, method, args, steps, baseline)
    text = input_kind(task.info) == "text"
    flat = x.flatten(1)
    fill = torch.zeros_like(flat) if baseline is None else baseline.expand_as(x).reshape(flat.shape).to(flat)
    if text:
        fill = torch.full_like(flat, task.info.get("pad_id", 0))
    removable = (flat != fill) & _valid(task, x, args, flat.shape[1])  # (B, N)
    a = attr.flatten(1).to(flat.device).float()

    def score(keep_out: torch.Tensor) -> torch.Tensor:
        xd = torch.where(keep_out, fill, flat).view_as(x)
        with torch.no_grad():
            return task.explain_scores(xd, *args).float().gather(1, t[:, None])[:, 0]

    def chosen(ranking: torch.Tensor) -> torch.Tensor:
        """(B, N) True at each row's k best removable features by `ranking`."""
        ranking = ranking.masked_fill(~removable, float("-inf"))
        n = removable.sum(1, keepdim=True).clamp(max=k)  # rows with fewer than k removable features
        order = ranking.argsort(1, descending=True)
        pick = torch.arange(flat.shape[1], device=flat.device)[None, :] < n
        return torch.zeros_like(removable).scatter(1, order, pick)

    base = score(torch.zeros_like(removable))
    top_drop = float((base - score(chosen(a))).mean())
    g = torch.Generator().manual_seed(seed)
    random_drops = [float((base - score(chosen(torch.rand(flat.shape, generator=g).to(flat.device)))).mean())
                    for _ in range(draws)]
    task.train(was_training)
    return {"top_drop": top_drop, "random_drop": sum(random_drops) / draws, "k": k}
