"""Several processes under torchrun: the same command, data-parallel.

Dist owns the process group and the few collectives the trainer needs besides the gradients: mean
metrics are summed across ranks, metrics that are not means (AUROC, BLEU, Frechet) are computed by each
task's validation_end over every rank's shard (Task.gather), and only rank 0 logs and writes. Gradients
are synchronised by the strategy (strategy.py: DistributedDataParallel or FSDP2). Works with gloo (CPU)
and nccl (CUDA).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self._owns_group = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self._owns_group = True

    def teardown(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_params(self, module: torch.nn.Module) -> None:
        if self.enabled:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        if self.enabled:
            for t in module.buffers():
                dist.broadcast(t.data, src=0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every process's `obj`, in rank order."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
