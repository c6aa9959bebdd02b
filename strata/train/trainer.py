"""The Trainer: fit / validate / test over any Task.

It never branches on a model family: a task yields one Loss per optimiser phase and the loop below
backpropagates, accumulates, clips, steps and schedules each phase the same way (see tasks/base.py).
Around that loop: validation every epoch (or every N steps), mixed precision (precision.py),
gradient accumulation, data parallelism across processes (DDP, or FSDP2 sharding: strategy.py), exact
resume, and a clean stop on Ctrl-C / SIGTERM or when a callback asks. What happens between steps (best checkpoint, early stopping, reduce-on-plateau, the
metrics files, TensorBoard, your own code) is a callback: see strata/train/callbacks.py.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from strata.config import RunConfig
from strata.data import load_data
from strata.device import pick_device, seed_everything
from strata.errors import (MISFIT_ERRORS, CheckpointError, ConfigError, Interrupted, StorageError, StrataError,
                           model_misfit)
from strata.registry import closest
from strata.run_folder import RunFolder
from strata.tasks.base import Loss, Task
from strata.train.budget import build_within_memory
from strata.train.callbacks import Callback, builtin_callbacks, hook_table, improves
from strata.train.checkpoint import (check_compatible, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
                                     surviving_checkpoint, weights_sha256)
from strata.train.distributed import Dist
from strata.train.evaluation import evaluate
from strata.train.host_memory import keep_freed_buffers
from strata.train.loader import EpochBatches
from strata.train.nonfinite import CHECK_EVERY, NonFiniteGuard
from strata.train.optim import build_optimizer, build_schedule
from strata.train.precision import Precision
from strata.train.progress import Progress
from strata.train.strategy import build_strategy, full_tensor

# Under torchrun, steps between the processes' checks for a stop signal or a callback's stop request
# (each check is a collective and a host-device sync, too dear for every step).
STOP_CHECK_EVERY = 8


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """fit() trains a run config's task into a run folder. `callbacks` (strata.train.Callback) are
    called after the built-in ones; `bundle` replaces the data the config names."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, device: str | None = None,
                 resume: bool = False, progress: Progress | None = None, bundle=None, callbacks=()):
        self.cfg = cfg
        t = cfg.trainer
        self.dist = Dist()
        self.device = pick_device(device or t.device)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"[trainer] precision: 'fp16' needs a CUDA device, got {self.device}; use 'bf16' or 'fp32'")
        self.dist.setup(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if run_dir is None:
            if resume:
                raise StrataError("--resume needs --run-dir DIR: the run folder to continue")
            run_dir = self.dist.broadcast_object(str(default_run_dir(cfg.name)))
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(run_dir)
        self.resume = resume
        self.main = self.dist.is_main
        self.progress = progress or Progress(t.progress, t.log_every_s, enabled=self.main)
        self._bundle = bundle
        self._user_callbacks = list(callbacks)
        hook_table(self._user_callbacks)  # a wrong object fails here, not after set-up
        self.callbacks: list[Callback] = []
        self._hooks = hook_table(())
        self._signal_seen: int | None = None  # a SIGINT / SIGTERM this process received
        self._stop_signal: int | None = None  # the signal every process agreed to stop for
        self._stop_asked: str | None = None  # a callback's request_stop on this process
        self._stop_reason: str | None = None  # the request every process agreed to stop for
        self._last_saved = None  # (step, epoch, batch_in_epoch) of the newest `last`
        # Rank 0 takes the run folder (strata's own, not in use: see RunFolder.claim) until fit returns;
        # every process raises its refusal.
        refused = None
        if self.main:
            try:
                self.folder.claim(resume)
            except StrataError as e:
                refused = e
        message = self.dist.broadcast_object(None if refused is None else str(refused))
        if refused is not None:
            raise refused
        if message is not None:
            raise StrataError(message)

    # --- set-up ---------------------------------------------------------------------------------
    def _setup(self):
        cfg, t = self.cfg, self.cfg.trainer
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        seed_everything(t.seed)
        keep_freed_buffers()  # each step's freed gradients and activations are reused, not faulted in again
        self.bundle = self._bundle if self._bundle is not None else load_data(cfg.data)
        self.info = dict(self.bundle.info)
        self.strategy = build_strategy(t.strategy, self.dist, self.device, t.precision)
        shards = self.strategy.shards
        self.task = build_within_memory(cfg, self.info, self.device, shards=shards)
        if shards == 1:
            self.task.to(self.device)
            self.dist.broadcast_params(self.task)
        # else: every process built the same weights from the same seed in host memory, and sharding moves
        # only its own shard to the device: a model that fits the devices together, not one of them
        if self.dist.enabled:  # same initial weights everywhere, then each rank its own dropout / noise
            seed_everything(t.seed + self.dist.rank)
        # Wrapped (DDP) or sharded (FSDP) before the optimisers are built: sharding replaces the parameters.
        owner = {id(p): name for name, (params, _) in self.task.configure_optimizers(cfg.optimizer).items()
                 for p in params}
        self.strategy.wrap(self.task, owner)
        self.task.to(self.device)  # what sharding left in host memory: the task's own buffers
        self.precision = Precision(t.precision, self.device)
        self.autocast = self.precision.autocast
        self._dry_run()
        specs = self.task.configure_optimizers(cfg.optimizer)
        self.optimizers = {name: build_optimizer(params, ocfg) for name, (params, ocfg) in specs.items()}
        self.opt_params = {name: [p for g in o.param_groups for p in g["params"]] for name, o in self.optimizers.items()}
        self.phase_names = list(self.optimizers)
        self.multi_opt = len(self.optimizers) > 1

        bs = cfg.data.batch_size
        self.train_batches = EpochBatches(self.bundle.train, bs, True, t.seed, self.device, self.dist.rank,
                                          self.dist.world, self.bundle.collate)
        if len(self.train_batches) == 0:
            raise ConfigError(f"[data] batch_size: {bs} x {self.dist.world} process(es) is larger than the "
                              f"{len(self.bundle.train)} training examples; lower batch_size or raise data.limit")
        self.steps_per_epoch = math.ceil(len(self.train_batches) / t.grad_accum)
        total = self.steps_per_epoch * t.max_epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.schedules = {name: build_schedule(o, cfg.schedule, self.total_steps, self.steps_per_epoch, t.mode)
                          for name, o in self.optimizers.items()}

        self.guard = NonFiniteGuard(t.nonfinite, self.dist)
        # Nothing to enter around a phase and nothing between its backward pass and its optimiser step (one
        # process, fp32, one optimiser, no clipping, the "stop" guard): a task's loss tensor then goes
        # straight to backward and the optimiser, without the context managers and checks that would do
        # nothing (on a small model a large part of what a step cost beyond a plain loop: BENCHMARKS.md).
        self._bare = (self.strategy.idle_phases and self.precision.plain and not self.multi_opt
                      and t.grad_clip == 0 and not self.guard.skips)
        name = self.phase_names[0]
        self._accum, self._bare_opt, schedule = t.grad_accum, self.optimizers[name], self.schedules[name]
        # what follows the optimiser step there: a per-step learning-rate schedule, a task's own update
        self._bare_after = [schedule.step] if schedule.each_step else []
        if type(self.task).after_optimizer_step is not Task.after_optimizer_step:
            self._bare_after.append(functools.partial(self.task.after_optimizer_step, name))
        if t.compile:
            for m in self.task.children():
                m.compile()

        self.callbacks = builtin_callbacks(cfg, self.schedules) + self._user_callbacks
        self._hooks = hook_table(self.callbacks)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict] = []
        self.wall_before = 0.0
        if self.resume:
            self._restore()
        if self.main:
            self.folder.write_start(self.cfg, self.info, self.bundle.artifacts)

    def _dry_run(self):
        """One evaluation step on two examples before training: a model that does not fit the data
        (wrong input size, channels, vocabulary, context) is reported here, as bad input, not as a
        traceback from deep inside the first training step."""
        data = self.bundle.val if self.bundle.val is not None and len(self.bundle.val) else self.bundle.train
        _, batch = next(EpochBatches(data, 2, False, 0, self.device, collate=self.bundle.collate).epoch(0))
        self.task.eval()
        try:
            with torch.no_grad(), self.autocast(), self.strategy.evaluation():
                self.task.validation_step(batch)
        except MISFIT_ERRORS as e:
            raise model_misfit(self.cfg, e) from e
        finally:
            self.task.validation_start()
            self.task.train()

    # --- callbacks ------------------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        """Every callback's `hook`, built-ins first (Lightning Fabric's fabric.call)."""
        for fn in self._hooks[hook]:
            fn(self, *args)

    def log(self, event: str, **values):
        """One record for the run's logs (metrics.jsonl, metrics.csv, TensorBoard): on_log, rank 0."""
        if self.main:
            self._call("on_log", {"event": event, "step": self.step, "epoch": self.epoch,
                                  "time": round(time.time(), 3), **values})

    def request_stop(self, reason: str) -> None:
        """Stop the run at the end of this step, on every process at the same step (with several
        processes: at their next check, at most STOP_CHECK_EVERY steps on, or after a validation).
        The run then saves `last`, tests, writes its summary and returns normally."""
        if self._stop_asked is None:
            self._stop_asked = reason

    @property
    def stopping(self) -> bool:
        return self._stop_signal is not None or self._stop_reason is not None

    # --- checkpoints ----------------------------------------------------------------------------
    def _state(self, rngs: list[dict]) -> dict:
        """Everything but the weights; the optimisers too unless they are in the shards. `rngs`: every
        process's random state, so a resume on as many processes continues each one's stream."""
        state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_batch": self.train_batches.global_batch,
            "schedules": {k: s.state_dict() for k, s in self.schedules.items()},
            "scaler": self.precision.state_dict(),
            "rng": rngs[0], "rng_ranks": rngs,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
            "history": json.dumps(self.history), "wall_time_s": self.wall_before + (time.perf_counter() - self.t0),
        }
        if not self.strategy.sharded_checkpoints:
            state["optimizers"] = {k: o.state_dict() for k, o in self.optimizers.items()}
        return state

    def save(self, which: str = "last") -> str | None:
        """checkpoints/<which>; every process calls it at the same point (under fsdp each writes its
        shard; rank 0 writes the rest). Returns the weights' sha256 on rank 0."""
        self.guard.check(self)  # weights a non-finite step produced are never saved
        if which == "last":
            self._last_saved = (self.step, self.epoch, self.batch_in_epoch)
        path = self.folder.checkpoint(which)
        weights = self.strategy.full_state_dict(self.task)
        rngs = self._rng_states()
        shards = None
        if self.strategy.sharded_checkpoints:
            # a fresh folder name per generation: the manifest's current one is never written over
            shards = self.dist.broadcast_object(f"shards-{self.step:09d}-{os.urandom(4).hex()}")
            self.strategy.save_sharded(path / shards, self.task, self.optimizers)
        if not self.main:
            return None
        try:
            sha = save_checkpoint(path, weights, self._state(rngs), self.cfg.to_dict(), self.step, shards)
        except StorageError as e:  # the manifest is written last: the previous generation is intact
            raise CheckpointError(f"{e}; checkpoint not saved, {surviving_checkpoint(path)}") from None
        self._call("on_checkpoint_saved", which, path)
        return sha

    def _check_position(self, state: dict, last) -> None:
        """batch_in_epoch counts global batches (batch_size x processes): mid-epoch, a run resumed on
        another number of processes continues at the same example only with the same global batch."""
        saved, now = state.get("global_batch"), self.train_batches.global_batch
        if not saved or saved == now or not state["batch_in_epoch"]:
            return
        world = self.dist.world
        fix = (f"set [data] batch_size = {saved // world}" if saved % world == 0 else
               f"run on a number of processes that divides {saved}")
        raise ConfigError(f"--resume: {last} stopped in the middle of epoch {state['epoch'] + 1} with global "
                          f"batches of {saved} examples; this run's are {self.cfg.data.batch_size} x {world} "
                          f"process(es) = {now}; {fix} to continue at the same example")

    def _rng_states(self) -> list[dict]:
        """Every process's random state, in rank order (sent as torch.save bytes: pickle cannot carry
        the numpy state's uint32 tensor)."""
        if not self.dist.enabled:
            return [rng_state()]
        buf = io.BytesIO()
        torch.save(rng_state(), buf)
        return [torch.load(io.BytesIO(b), weights_only=True) for b in self.dist.all_gather_object(buf.getvalue())]

    def _restore(self):
        last = self.folder.checkpoint("last")
        weights, state, saved = load_checkpoint(last)
        check_compatible(self.task.state_dict(), weights, str(last))
        now = self.cfg.to_dict()
        changed = [f"[{sec}]" for sec in ("model", "task", "optimizer") if saved.get(sec, now[sec]) != now[sec]]
        changed += ["[data] name"] if saved.get("data", {}).get("name", self.cfg.data.name) != self.cfg.data.name else []
        if changed:
            raise CheckpointError(f"--resume: {', '.join(changed)} differ from the config the checkpoint in "
                                  f"{self.run_dir} was trained with; resume with {self.folder.config} "
                                  "(or start a new run folder for the new settings)")
        self._check_position(state, last)
        if "shards" in state:  # resharded for this run's processes by torch.distributed.checkpoint
            self.strategy.load_sharded(Path(state["shards"]), self.task, self.optimizers)
        elif self.strategy.sharded_checkpoints and self.dist.enabled:
            raise CheckpointError(f"--resume: {last} was written by a run with [trainer] strategy = 'ddp' (its "
                                  "optimiser states are not sharded); resume it with strategy = 'ddp'")
        else:
            self.strategy.load_full_state_dict(self.task, weights)
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedules.items():
            s.load_state_dict(state["schedules"][k])
        self.precision.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # checkpoints written before callbacks kept best and bad_validations at the top
        legacy = {k: state[k] for k in ("best", "bad_validations") if k in state}
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(state.get("callbacks", {}).get(cb.state_key, legacy))
        self.history = json.loads(state["history"])
        self.wall_before = state["wall_time_s"]
        # each process its own stream; a process the saving run did not have continues rank 0's
        ranks = state.get("rng_ranks") or [state["rng"]]
        set_rng_state(ranks[self.dist.rank] if self.dist.rank < len(ranks) else state["rng"])

    # --- signals ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self, now: bool = False):
        """SIGINT / SIGTERM finish the current step and save (`now`: `last` is saved, stop at once)."""
        if not hasattr(signal, "SIGTERM") or sys.modules["threading"].current_thread() is not sys.modules["threading"].main_thread():
            yield
            return

        def handler(signum, frame):
            if now:
                raise Interrupted(signum, self.run_dir, self.folder.checkpoint("last"))
            if self._signal_seen is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._signal_seen = signum
            if self.main:
                soon = f"the next {STOP_CHECK_EVERY} steps" if self.dist.enabled else "the current step"
                print(f"\n{signal.Signals(signum).name}: finishing {soon} and saving...", file=sys.stderr)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # --- the loop -------------------------------------------------------------------------------
    def _phase(self, loss: Loss, boundary: bool):
        t = self.cfg.trainer
        name = loss.optimizer
        if name not in self.optimizers:
            raise RuntimeError(f"task yielded a loss for optimiser '{name}', but configure_optimizers gave "
                               f"{sorted(self.optimizers)}")
        value = loss.value / t.grad_accum if t.grad_accum > 1 else loss.value
        # with several optimisers only this one's parameters receive gradients: a generator loss that
        # flows through the discriminator leaves the discriminator's .grad untouched (under fsdp the
        # strategy's phase puts the other optimisers' gradients back instead)
        inputs = self.strategy.backward_inputs(self.opt_params[name]) if self.multi_opt else None
        self.precision.backward(value, inputs)
        if not boundary:
            return
        opt, params = self.optimizers[name], self.opt_params[name]
        norm = None
        if t.grad_clip > 0:
            self.precision.unscale_(opt)
            norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        if self.guard.skips:
            if norm is None:
                self.precision.unscale_(opt)
            if not self.guard.step_ok(self, loss.value, params, norm):
                opt.zero_grad(set_to_none=True)
                return
        self.precision.step(opt)
        opt.zero_grad(set_to_none=True)
        self.schedules[name].step()
        self.task.after_optimizer_step(name)

    def _train_step(self, batch, boundary: bool) -> torch.Tensor:
        """One batch: each optimiser phase in the order of configure_optimizers (a generator task's code
        for phase k runs inside next(), so it sees the weights as the previous phases left them).
        Returns the first phase's loss, detached."""
        if self._bare:
            out = self.task.training_step(batch)
            if isinstance(out, torch.Tensor):  # the _phase below, less what does nothing here
                accum = self._accum
                (out / accum if accum > 1 else out).backward()
                if boundary:
                    opt = self._bare_opt
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    for after in self._bare_after:
                        after()
                return out.detach()  # kept until the guard's check: not its graph
            return self._phases(out, boundary)
        # Each phase's forward code and backward pass run in that phase's synchronisation context:
        # only the units of its optimiser reduce gradients, and only on an accumulation boundary.
        with self.strategy.phase(self.phase_names[0], boundary), self.autocast():
            out = self.task.training_step(batch)
        return self._phases(out, boundary)

    def _phases(self, out, boundary: bool) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            out = (Loss(self.phase_names[0], out),)
        first = None
        it = iter(out)
        for k, expected in enumerate(self.phase_names):
            with self.strategy.phase(expected, boundary):
                with self.autocast():
                    loss = next(it, None)
                if loss is None:
                    break
                if loss.optimizer != expected:
                    raise RuntimeError(f"{type(self.task).__name__}.training_step yielded a loss for optimiser "
                                       f"'{loss.optimizer}' in phase {k}, expected '{expected}' (phases follow "
                                       f"configure_optimizers: {self.phase_names})")
                self._phase(loss, boundary)
            if first is None:
                first = loss
            if loss.logs:
                for k, v in loss.logs.items():
                    s, n = self._logs_sum.get(k, (0.0, 0))
                    self._logs_sum[k] = (s + v.detach().float(), n + 1)
        if boundary:
            self.precision.update()
        return first.value.detach()

    def fit(self) -> dict:
        try:
            return self._run()
        finally:
            self.folder.unlock()
            if hasattr(self, "strategy") and hasattr(self, "task"):  # a set-up that failed built no task
                self.strategy.unwrap(self.task)

    def _run(self) -> dict:
        self.t0 = time.perf_counter()
        self._setup()
        if self.main:
            what = "resuming" if self.resume else "training"
            # The model's own parameters (summary_modules), not copies a task keeps such as EMA weights.
            params = {id(p): p for m in self.task.summary_modules().values() for p in m.parameters()}
            n_params = sum(p.numel() for p in params.values())
            self.progress.write(f"{what} {self.cfg.name}: {self.cfg.model.name} ({n_params:,} parameters) on "
                                f"{self.device}, {len(self.bundle.train):,} training examples"
                                + (f", {self.dist.world} processes" if self.dist.enabled else "")
                                + f" -> {self.run_dir}")
        self._call("on_fit_start")
        try:
            summary = self._fit()
        except BaseException as e:
            self._call("on_exception", e)
            raise
        self._call("on_fit_end", summary)
        return summary

    def _fit(self) -> dict:
        t = self.cfg.trainer
        if self.step < self.total_steps:
            self._sanity_check()
        with self._signals():
            while self.epoch < t.max_epochs and self.step < self.total_steps and not self.stopping:
                self._epoch()
                self._agree_on_stop()
            if self._stop_signal is not None:
                self.save("last")
                # No rank exits before rank 0 has saved: torchrun would stop it mid-write.
                self.dist.barrier()
                self.log("interrupted", signal=signal.Signals(self._stop_signal).name)
                raise Interrupted(self._stop_signal, self.run_dir, self.folder.checkpoint("last"))
        if self._stop_reason is not None:
            self.progress.write(self._stop_reason)
            if self._last_saved != (self.step, self.epoch, self.batch_in_epoch):
                self.save("last")
        try:
            with self._signals(now=True):  # the test pass and summary: a signal stops them at once
                return self._finish()
        except Interrupted as e:
            self.log("interrupted", signal=signal.Signals(e.signum).name)
            raise

    def _epoch(self) -> None:
        """One epoch from where the last one left off; returns early when the run is stopping. The loop
        does no tensor work of its own per step (the guard reads the losses in batches, for its check and
        the training-loss mean alike) and reads its settings once: a step costs little more than a plain
        loop's (benchmarks/peers.py --lockstep)."""
        t = self.cfg.trainer
        self.task.train()
        epoch_start = time.perf_counter()
        total = len(self.train_batches)
        guard = self.guard
        guard.reset_loss()
        self._logs_sum: dict[str, tuple[torch.Tensor, int]] = {}  # a task's extra per-step figures (Loss.logs)
        self.progress.start_epoch(self.epoch + 1, total)
        accum, batch_size, val_every, save_every, max_steps = (t.grad_accum, self.cfg.data.batch_size,
                                                               t.val_every_n_steps, t.checkpoint_every_n_steps,
                                                               t.max_steps)
        batch_hooks, live, dist = self._hooks["on_batch_end"], self.progress.live, self.dist.enabled
        periodic = bool(val_every or save_every or max_steps)
        pending, first = guard.pending, self.batch_in_epoch
        for i, batch in self.train_batches.epoch(self.epoch, self.batch_in_epoch):
            boundary = accum == 1 or (i + 1) % accum == 0 or i + 1 == total
            loss = self._train_step(batch, boundary)
            pending.append((self.step + 1, loss))  # the guard's: the losses wait on the device
            if len(pending) >= CHECK_EVERY:
                guard.check(self)
            self.batch_in_epoch = i + 1
            if not boundary:
                continue
            self.step += 1
            if batch_hooks:
                self._call("on_batch_end", self.step, loss)
            if live:
                self.progress.update(self.epoch + 1, i + 1, total, self.step, self._shown,
                                     (i + 1 - first) * batch_size)
            # a stop is agreed on where one was asked for (one process), or every STOP_CHECK_EVERY steps
            if (self.step % STOP_CHECK_EVERY == 0) if dist else \
                    (self._signal_seen is not None or self._stop_asked is not None):
                self._agree_on_stop()
                if self.stopping:
                    return
            if not periodic:
                continue
            if val_every and self.step % val_every == 0 and i + 1 < total:
                self.log("train", loss=guard.loss_mean(self), lr=self._lr(), **self._mean_logs())
                guard.reset_loss()
                self._validate()
                if self.stopping:
                    return
                self.task.train()
            elif save_every and self.step % save_every == 0:
                self.save("last")
            if max_steps and self.step >= max_steps:
                break
        # The end of the epoch, or of the run at max_steps. Stopped in the middle of an epoch, the run keeps
        # that epoch open where it stopped (its checkpoint too), and its last validation leaves the random
        # state as it was, so a resume with a larger max_steps goes on with the next batch of the same order
        # and the same random numbers, as the straight run does (callbacks that act on validations, such as
        # early stopping or a plateau schedule, do see the extra one).
        mean = guard.loss_mean(self)
        ended = self.batch_in_epoch == total
        if ended:
            self.epoch += 1
            self.batch_in_epoch = 0
            for s in self.schedules.values():
                s.epoch_end()
        metrics = {}
        if mean is not None:  # nothing since a mid-epoch validation: no new training loss to report
            metrics["train/loss"] = mean
            self.log("train", loss=mean, lr=self._lr(), **self._mean_logs())
        metrics.update(self._validate(keep_rng=not ended))
        self.progress.end_epoch(self.epoch if ended else self.epoch + 1, {**metrics, "lr": self._lr()},
                                time.perf_counter() - epoch_start)
        self._call("on_epoch_end", metrics)

    def _shown(self) -> dict[str, float]:
        """What the progress display shows (read only when it refreshes)."""
        mean = self.guard.loss_mean(self)
        return {"loss": mean if mean is not None else float("nan")}

    def _mean_logs(self) -> dict[str, float]:
        out = {f"train/{k}": float(v) / n for k, (v, n) in self._logs_sum.items()}
        self._logs_sum = {}
        return out

    def _agree_on_stop(self) -> None:
        """One process stops at the step its signal arrived, or a callback asked it to. Processes see a
        signal (and may ask) at different steps, so they compare notes (an all-reduce and a host sync)
        at the same points, every STOP_CHECK_EVERY steps and after each validation and epoch, and all
        stop together at the first point after any of them saw one: no rank waits forever in a
        collective the others left."""
        if not self.dist.enabled:
            self._stop_signal = self._signal_seen
            self._stop_reason = self._stop_asked
            return
        flag = torch.tensor([float(self._signal_seen or 0), float(self._stop_asked is not None)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        seen, asked = (int(v) for v in flag.tolist())
        if seen:
            self._stop_signal = self._signal_seen or seen
        if asked:
            self._stop_reason = self._stop_asked or "stopping: another process asked to"

    def _lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def _validate(self, keep_rng: bool = False) -> dict[str, float]:
        """Validate (when there is a validation split), tell the callbacks, save `last`, and let the
        processes agree on a stop a callback may have asked for. Returns the metrics. `keep_rng`: the
        random state after it is the one before (a validation the straight run does not make)."""
        val = {}
        if self.bundle.val is not None and len(self.bundle.val) > 0:
            self.dist.broadcast_buffers(self.task)  # e.g. batch-norm statistics: rank 0's everywhere
            state = rng_state() if keep_rng else None
            val = self.dist.broadcast_object(self.evaluate_split("val"))
            if state is not None:
                set_rng_state(state)
            self.history.append({"step": self.step, "epoch": self.epoch, **val})
            self.log("val", **val)
            self._call("on_validation_end", val)
        self.save("last")
        self._agree_on_stop()
        return val

    def evaluate_split(self, split: str, max_batches: int = 0) -> dict[str, float]:
        data = getattr(self.bundle, split)
        if data is None:
            raise StrataError(f"data set '{self.cfg.data.name}' has no {split} split")
        bs = self.cfg.data.eval_batch_size or 2 * self.cfg.data.batch_size
        with self.strategy.evaluation():
            return evaluate(self.task, data, split, bs, self.device, self.bundle.collate, self.dist, self.autocast,
                            max_batches)

    def _sanity_check(self) -> None:
        """A few validation batches before the first training step (Lightning's sanity check), so a
        monitor that names no metric, or a validation step that fails, stops the run now rather than
        after an epoch. The random state is restored: a run is the same with or without it."""
        t = self.cfg.trainer
        if not t.sanity_val_batches or self.bundle.val is None or len(self.bundle.val) == 0:
            return
        state = rng_state()
        try:
            val = self.dist.broadcast_object(self.evaluate_split("val", t.sanity_val_batches))
        finally:
            set_rng_state(state)
        if t.monitor in val:
            return
        hint = closest(t.monitor, val)
        # A metric that needs more of the split (AUROC needs both classes) may be missing from a few
        # batches; a near miss of a metric that is there, or a name outside val/, is a typo.
        if hint or not t.monitor.startswith("val/"):
            raise ConfigError(f"[trainer] monitor: '{t.monitor}' is not a validation metric of this run{hint}; "
                              f"it logs {', '.join(sorted(val))}")

    def _finish(self) -> dict:
        """Test with the best weights, write summary.json; the final (last) weights give weights_sha256."""
        final_sha = weights_sha256(self.strategy.full_state_dict(self.task))
        wall = self.wall_before + (time.perf_counter() - self.t0)
        summary = {"name": self.cfg.name, "steps": self.step, "epochs": self.epoch}
        if self.history:
            monitor, best = self.cfg.trainer.monitor, None
            for h in self.history:
                if monitor in h and improves(h[monitor], best, self.cfg.trainer.mode):
                    best = h[monitor]
            best_entry = [h for h in self.history if h.get(monitor) == best]
            summary.update({k: v for k, v in (best_entry[-1] if best_entry else self.history[-1]).items()
                            if k not in ("step", "epoch")})
            summary["best_" + monitor] = best
        test_metrics = {}
        if self.bundle.test is not None and len(self.bundle.test) > 0:
            last_state = {k: v.clone() for k, v in self.task.state_dict().items()}
            self.dist.broadcast_object(None)  # rank 0 has written best
            if self.folder.has_checkpoint("best"):
                self.strategy.load_full_state_dict(self.task, self.folder.load_weights("best")[0])
            test_metrics = self.evaluate_split("test")
            self.task.load_state_dict(last_state)
            self.log("test", **test_metrics)
            summary.update(test_metrics)
        summary.update({
            "wall_time_s": round(wall, 3), "device": str(self.device), "processes": self.dist.world,
            "torch": torch.__version__, "seed": self.cfg.trainer.seed, "weights_sha256": final_sha,
            "run_dir": str(self.run_dir),
        })
        summary = self.guard.summarise(summary, self.progress.write)
        if self.main:
            self.folder.write_summary(summary)
            self.progress.write("summary: " + ", ".join(
                f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float) and "/" in k)
                + f" | {wall:.1f}s | {self.run_dir}")
        self.summary = summary
        return summary
