"""[trainer] nonfinite: what a NaN or inf loss or gradient does to a run.

"stop" (the default) ends the run with exit 2 and a message naming the step, the last finite loss and
what usually causes it (Keras' TerminateOnNaN, Lightning's check_finite), before a validation, a
checkpoint or summary.json can record the damage: checkpoints/last keeps the newest finite state.
It costs the loop nothing per step: each batch's loss stays on the device until the loop reads them
all at once, every CHECK_EVERY steps and where it waits for the device anyway (the end of an epoch,
before a validation or a checkpoint). The same read adds them to the running training loss (`loss_mean`),
so the loop does no tensor work of its own per step for its logs.

"skip" leaves out the update of a step whose loss or gradient norm is not finite and counts it, as an
fp16 gradient scaler does; deciding needs one number from the device per step (the scaler pays the
same). SKIP_LIMIT skipped steps in a row stop the run: then the weights or the data are broken, not
one batch.
"""

from __future__ import annotations

import math

import torch

from strata.errors import Diverged
from strata.train.strategy import full_tensor

CHECK_EVERY = 32
SKIP_LIMIT = 25

CAUSES = ("usual causes: a learning rate too high ([optimizer] lr = {lr:g}), NaN or inf in the data, or an "
          "overflow in the model; lower lr, set [trainer] grad_clip = 1.0, or check the data")


class NonFiniteGuard:
    """Owned by the Trainer: its loop appends every batch's (step, loss) to `pending` and calls `check`
    when CHECK_EVERY have gathered and where it syncs anyway; `loss_mean` for the logs; `step_ok` before
    each optimiser step (only in "skip" mode)."""

    def __init__(self, mode: str, dist=None):
        self.mode = mode
        self.dist = dist
        self.skips = mode == "skip"
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet read from the device
        self.last_finite: tuple[int, torch.Tensor] | None = None  # read only for the message
        self.skipped = 0
        self.in_a_row = 0
        self._sum: torch.Tensor | None = None  # finite losses checked since reset_loss(), on the device
        self._count: torch.Tensor | None = None

    def reset_loss(self) -> None:
        """Start a new training-loss mean (an epoch, or the steps up to a validation)."""
        self._sum = self._count = None

    def loss_mean(self, trainer) -> float | None:
        """Mean of the finite losses recorded since reset_loss() (None if there were none): checks the
        pending ones first, so it reads the device once."""
        self.check(trainer)
        if self._count is None:
            return None
        count = int(self._count)
        return float(self._sum) / count if count else None

    def check(self, trainer) -> None:
        """Read the recorded losses (one host sync); raise Diverged when one is not finite ("stop"), or
        leave it out of the training-loss mean ("skip": step_ok has already judged its step)."""
        if not self.pending:
            return
        pending = self.pending[:]
        self.pending.clear()  # in place: the trainer's loop appends to this list
        losses = torch.stack([loss for _, loss in pending]).float().flatten()  # (n,) one loss a batch
        finite = torch.isfinite(losses)
        total, count = torch.where(finite, losses, 0.0).sum(), finite.sum()
        self._sum = total if self._sum is None else self._sum + total
        self._count = count if self._count is None else self._count + count
        if self.skips:
            return
        bad = ~finite.all()
        if self.dist is not None and self.dist.enabled:  # every process stops at the same check
            flag = bad.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag[0] > 0
        if not bool(bad):
            self.last_finite = pending[-1]
            return
        local = [i for i, ok in enumerate(finite.tolist()) if not ok]
        if not local:
            raise Diverged("[trainer] nonfinite: another process's loss stopped being finite; the run stopped "
                           f"at step {pending[-1][0]}")
        i = local[0]
        before = pending[i - 1] if i else self.last_finite
        step, value = pending[i][0], float(losses[i])
        trainer.log("nonfinite", loss=str(value), at_step=step, last_finite_loss=float(before[1]) if before else None)
        last = f"the last finite loss was {float(before[1]):.4g} at step {before[0]}" if before else \
            "no step had a finite loss"
        saved = getattr(trainer, "_last_saved", None)
        kept = f"; checkpoints/last holds step {saved[0]}" if saved else ""
        raise Diverged(f"training stopped at step {step} (epoch {trainer.epoch + 1}): the loss is {value}; {last}"
                       f"{kept}. " + CAUSES.format(lr=trainer.cfg.optimizer.lr)
                       + "; [trainer] nonfinite = \"skip\" skips such steps instead")

    def step_ok(self, trainer, loss: torch.Tensor, params, norm: torch.Tensor | None) -> bool:
        """"skip" mode, before an optimiser step on unscaled gradients: whether to apply it. `norm`:
        the gradients' total norm when clipping has computed it already."""
        if norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            norm = full_tensor(torch.nn.utils.get_total_norm(grads)) if grads else torch.zeros(())
        ok = torch.isfinite(norm.float()) & torch.isfinite(loss.detach().float())
        if self.dist is not None and self.dist.enabled:  # the same decision on every process
            flag = ok.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = flag[0] > 0
        if bool(ok):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= SKIP_LIMIT:
            raise Diverged(f"training stopped at step {trainer.step + 1} (epoch {trainer.epoch + 1}): "
                           f"{self.in_a_row} steps in a row had a non-finite loss or gradient and were skipped "
                           f"({self.skipped} in all). " + CAUSES.format(lr=trainer.cfg.optimizer.lr))
        return False

    def summarise(self, summary: dict, say) -> dict:
        """summary.json never holds NaN or inf: such figures become null, named on the terminal; the
        steps "skip" mode left out are counted."""
        bad = sorted(k for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            say(f"warning: {', '.join(f'{k} = {summary[k]}' for k in bad)} not finite; written as null in "
                "summary.json")
            summary.update({k: None for k in bad})
            summary["nonfinite_metrics"] = bad
        if self.skips:
            summary["nonfinite_skipped_steps"] = self.skipped
        return summary
