"""[trainer] strategy: how the processes under torchrun share one model.

ddp   Every process holds the whole model and optimiser. DistributedDataParallel averages the gradients
      in buckets while the backward pass is still running (Li et al., "PyTorch Distributed: Experiences
      on Accelerating Data Parallel Training", 2020); a micro-batch inside a gradient accumulation runs
      under no_sync, without communication.
fsdp  torch.distributed.fsdp.fully_shard (FSDP2; Zhao et al., "PyTorch FSDP", 2023): parameters,
      gradients and optimiser state are split across the N processes, 1/N each. A block's weights are
      all-gathered just before it runs and its gradients reduce-scattered as soon as they are ready.
      Checkpoints go through torch.distributed.checkpoint (each process writes its own shard) and
      resume on the same or another number of processes; each also holds the consolidated weights
      (model-*.safetensors), which `strata evaluate / predict / export` and strata.load read.

What is wrapped. A task calls its own submodules inside training_step (`self.model(x)`; a GAN's
generator, then its discriminator) and reads their attributes, so the Task itself is never wrapped.
A *unit* is the outermost module below the task whose trainable parameters all belong to one optimiser:
the task's `model` for a one-optimiser task, a GAN's generator and discriminator. Each unit is wrapped
where it stands (`Replicated`, a DistributedDataParallel that looks like the module it wraps; or
fully_shard, which keeps the module's class, attributes and state-dict keys), so a task's code, its
checkpoints and weights_sha256 are the same under every strategy. A unit produces its training loss
through its forward (`self.model(x)`): that call is where DDP and FSDP hook in.

Phases. A unit synchronises only in its own optimiser's phase, on an accumulation boundary: elsewhere it
runs without (DDP's no_sync, FSDP's set_requires_gradient_sync(False)), so the generator's forward in
the discriminator's phase expects no reduction from a backward pass that never reaches it.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from strata.errors import StrataError


def units(task: nn.Module, owner: dict[int, str]) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, module, optimiser name) of each unit below `task` (see the module docstring);
    `owner` maps id(parameter) to the name of the optimiser that steps it."""
    found: list[tuple[str, nn.Module, str]] = []

    def visit(module: nn.Module, name: str) -> None:
        mine = {owner[id(p)] for p in module.parameters() if p.requires_grad and id(p) in owner}
        if not mine:
            return
        if len(mine) == 1 and module is not task:
            found.append((name, module, mine.pop()))
            return
        direct = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad and id(p) in owner]
        if direct:
            where = f"'{name}'" if name else type(module).__name__
            raise StrataError(f"{where} holds trainable parameters itself ({', '.join(direct)}) while its modules "
                              f"are stepped by {len(mine)} optimisers ({', '.join(sorted(mine))}); under torchrun "
                              "each trainable parameter must live in a submodule stepped by one optimiser: move "
                              "it into one")
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(task, "")
    return found


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _strip_prefix(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: `<prefix>module.<key>` -> `<prefix><key>` (order kept)."""
    inner = prefix + "module."
    for key in list(state_dict):
        value = state_dict.pop(key)
        state_dict[prefix + key[len(inner):] if key.startswith(inner) else key] = value


def _add_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """load_state_dict pre-hook, the inverse of _strip_prefix."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "module.")]:
        state_dict[prefix + "module." + key[len(prefix):]] = state_dict.pop(key)


class Replicated(DistributedDataParallel):
    """DistributedDataParallel that looks like the module it wraps: attributes it does not have fall
    through to the module (`self.model.context_size`, `self.model.generate(...)`), and state-dict keys
    carry no `module.`."""

    def __init__(self, module: nn.Module, optimizer: str, **kwargs):
        super().__init__(module, **kwargs)
        self.optimizer_name = optimizer
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


class Strategy:
    """One process, or ddp: the methods the trainer calls whatever the strategy. FullyShard overrides them."""

    name = "ddp"
    sharded_checkpoints = False

    def __init__(self, dist, device: torch.device, precision: str):
        self.dist, self.device, self.precision = dist, device, precision
        self.units: list[tuple[str, nn.Module, str]] = []

    @property
    def shards(self) -> int:
        """Into how many parts the weights, gradients and optimiser state are split."""
        return 1

    def wrap(self, task: nn.Module, owner: dict[int, str]) -> None:
        """Wrap each unit of `task` in place (before the optimisers are built: FSDP replaces parameters)."""
        if not self.dist.enabled:
            return
        kwargs = {"device_ids": [self.device.index] if self.device.type == "cuda" else None,
                  # buffers (batch-norm statistics) are broadcast from rank 0 before each validation and
                  # checkpoint, as the trainer always did, not at every forward
                  "forward_sync_buffers": False,
                  # a model may leave some of its parameters out of a step (a layer it does not call, a
                  # branch the input skips): DDP then looks for them in the graph after each forward
                  # (one pass over the autograd graph) rather than wait forever for their gradients
                  "find_unused_parameters": True}
        for name, module, opt in units(task, owner):
            wrapped = Replicated(module, opt, **kwargs)
            _replace(task, name, wrapped)
            self.units.append((name, wrapped, opt))

    def unwrap(self, task: nn.Module) -> None:
        """After training: the task's own modules back in place of their DDP wrappers."""
        for name, unit, _ in self.units:
            _replace(task, name, unit.module)
        self.units = []

    @property
    def idle_phases(self) -> bool:
        """Whether phase() does nothing (one process): the trainer's step then does not enter it."""
        return not self.units

    def phase(self, optimizer: str, boundary: bool) -> contextlib.AbstractContextManager:
        """Around one optimiser phase (its forward code and its backward pass)."""
        if not self.units:  # one process: nothing to hold back, at no cost per step
            return contextlib.nullcontext()
        return self._no_sync(optimizer, boundary)

    @contextlib.contextmanager
    def _no_sync(self, optimizer: str, boundary: bool) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for _, unit, opt in self.units:
                if not (boundary and opt == optimizer):
                    stack.enter_context(unit.no_sync())
            yield

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Around an evaluation pass, in which the processes run different numbers of batches."""
        yield

    def backward_inputs(self, params: list[nn.Parameter]) -> list[nn.Parameter] | None:
        """What a phase's backward pass computes gradients for, given its optimiser's parameters."""
        return params

    def full_state_dict(self, task: nn.Module) -> dict[str, torch.Tensor]:
        """The whole task's weights on every process (a collective under fsdp)."""
        return task.state_dict()

    def load_full_state_dict(self, task: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        task.load_state_dict(weights)

    def save_sharded(self, folder: Path, task: nn.Module, optimizers: dict) -> None:
        raise NotImplementedError

    def load_sharded(self, folder: Path, task: nn.Module, optimizers: dict) -> None:
        """Weights and optimiser states from a torch.distributed.checkpoint folder, resharded for this run."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)

        state = {"model": get_model_state_dict(task),
                 "optim": {k: get_optimizer_state_dict(task, o) for k, o in optimizers.items()}}
        with _one_process_quietly():
            dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(task, state["model"])
        for k, o in optimizers.items():
            set_optimizer_state_dict(task, o, state["optim"][k])


class FullyShard(Strategy):
    """fsdp: fully_shard each block of each unit (the entries of its outermost ModuleLists and
    Sequentials: a transformer's layers, a CNN's stages), then the unit; modules that hold only frozen
    parameters (an EMA copy) are sharded the same way, so an EMA update pairs shard with shard."""

    name = "fsdp"
    sharded_checkpoints = True
    idle_phases = False

    @property
    def shards(self) -> int:
        return self.dist.world

    def wrap(self, task: nn.Module, owner: dict[int, str]) -> None:
        if not self.dist.enabled:  # one process: nothing to shard; checkpoints keep the sharded format
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.dist.world,))
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # compute in the low precision, reduce gradients in fp32 (as autocast's fp32 master weights)
        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
        found = units(task, owner)
        inside = {id(p) for _, m, _ in found for p in m.parameters()}
        frozen = [(n, m, "") for n, m in task.named_children()
                  if any(True for _ in m.parameters()) and not any(id(p) in inside for p in m.parameters())]
        for name, module, opt in found + frozen:
            for block in _blocks(module):
                fully_shard(block, mesh=mesh, mp_policy=policy)
            fully_shard(module, mesh=mesh, mp_policy=policy)
            self.units.append((name, module, opt))

    def unwrap(self, task: nn.Module) -> None:
        """Sharded modules stay sharded (FSDP2 has no way back): strata.load(run_dir) gives the whole model."""

    @contextlib.contextmanager
    def phase(self, optimizer: str, boundary: bool) -> Iterator[None]:
        """With one optimiser: reduce-scatter on accumulation boundaries only. With several (a GAN), the
        graph holds FSDP's gathered copies of the weights, not the parameters, so a phase's backward
        cannot be limited to its own parameters (backward_inputs): it fills every unit's gradients,
        reduce-scattered at once, and the other optimisers' gradients are put back as they were."""
        several = len({opt for _, _, opt in self.units if opt}) > 1
        others = [p for _, unit, opt in self.units if opt and opt != optimizer for p in unit.parameters()]
        kept = [p.grad for p in others]
        for p in others:
            p.grad = None
        for _, unit, opt in self.units:
            unit.set_requires_gradient_sync(several or (boundary and opt == optimizer))
        try:
            yield
        finally:
            for p, g in zip(others, kept):
                p.grad = g

    def backward_inputs(self, params: list[nn.Parameter]) -> None:
        return None

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Whole weights for the pass: each process runs its own number of batches, so no forward may
        all-gather (the others would not join). Gathered once here, on every process, and released after."""
        from torch.distributed.fsdp import FSDPModule

        groups = [m for _, unit, _ in self.units for m in unit.modules() if isinstance(m, FSDPModule)]
        for m in groups:  # unshard / reshard act on one module's own parameters, not its blocks'
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in groups:
                m.reshard()
                m.set_reshard_after_forward(True, recurse=False)

    def full_state_dict(self, task: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import DTensor

        # gathered one tensor at a time into host memory: the device never holds the whole model
        return {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in task.state_dict().items()}

    def load_full_state_dict(self, task: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        # every process holds the whole tensor: each keeps its own slice, nothing is sent
        current = task.state_dict()
        task.load_state_dict({k: distribute_tensor(w.to(current[k].device), current[k].device_mesh,
                                                   current[k].placements, src_data_rank=None)
                              if isinstance(current.get(k), DTensor) else w for k, w in weights.items()})

    def save_sharded(self, folder: Path, task: nn.Module, optimizers: dict) -> None:
        """Every process writes its shard of the weights and optimiser states into `folder`."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(task),
                 "optim": {k: get_optimizer_state_dict(task, o) for k, o in optimizers.items()}}
        with _one_process_quietly():
            dcp.save(state, checkpoint_id=str(folder))


@contextlib.contextmanager
def _one_process_quietly():
    """torch.distributed.checkpoint in one process (no process group) warns that it assumes so; it may."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def full_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
    """A DTensor's whole value (a collective), anything else as it is: a gradient norm under fsdp."""
    return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The entries (with parameters) of the outermost ModuleLists and Sequentials inside `module`."""
    if isinstance(module, (nn.ModuleList, nn.Sequential)):
        # a list inside a list (a U-Net's levels of blocks) has no forward to hook: its entries are the blocks
        return [b for m in module if any(True for _ in m.parameters())
                for b in (_blocks(m) if isinstance(m, (nn.ModuleList, nn.ModuleDict)) else [m])]
    return [b for child in module.children() for b in _blocks(child)]


STRATEGIES = {"ddp": Strategy, "fsdp": FullyShard}


def build_strategy(name: str, dist, device: torch.device, precision: str) -> Strategy:
    return STRATEGIES["ddp" if name == "auto" else name](dist, device, precision)
