"""Batches for the trainer, resumable at any position.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), never from the
global RNG, so a run resumed mid-epoch replays exactly the batches it had not yet seen. With several
processes, global batch i is perm[i*G:(i+1)*G] (G = batch_size * world) and rank r takes its
contiguous slice of it: the same examples, in the same global batches, as one process with batch G.

A `TensorSplit` is batched by indexing on the device. Any other Dataset (a streamed image folder or
CSV table, a user's Dataset) goes through one DataLoader for the whole run, with the dataset's
`num_workers` worker processes (kept alive between epochs) and pinned memory on CUDA; its batch
sampler (EpochSampler) is pointed at (epoch, start) before each pass, so the batches are those of the
tensor path, index for index, and a resumed run starts at the next batch. The DataLoader draws its
worker seeds from its own generator, never from the global RNG that a checkpoint saves and restores.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from strata.data.base import TensorSplit


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class EpochSampler(Sampler):
    """The index batches of one split, epoch by epoch, from a start batch on. As a DataLoader's
    batch_sampler it yields the index lists of epoch `epoch` from batch `start`: set_epoch(epoch, start)
    before each pass (the loader reads it when the pass begins)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1,
                 drop_last: bool | None = None):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        if drop_last is None:
            drop_last = shuffle and world > 1
        self.drop_last = drop_last
        if shuffle:
            # a last batch of a single example is dropped too: batch norm cannot train on one example
            drop_last = drop_last or n % self.global_batch == 1
            self.num_batches = n // self.global_batch if drop_last else math.ceil(n / self.global_batch)
        else:
            # evaluation: rank r sees examples r, r+world, ... (each exactly once overall)
            self.num_batches = math.ceil(math.ceil((n - rank) / world) / batch_size) if n > rank else 0
        self.epoch, self.start = 0, 0

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.world)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def index_batches(self, epoch: int, start: int):
        """(batch index, example indices) of epoch `epoch` from batch `start` on."""
        order = self.order(epoch)
        for i in range(start, self.num_batches):
            if self.shuffle and self.world > 1:
                glob = order[i * self.global_batch:(i + 1) * self.global_batch]
                per = math.ceil(len(glob) / self.world)
                idx = glob[self.rank * per:(self.rank + 1) * per]
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield i, idx

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        for _, idx in self.index_batches(self.epoch, self.start):
            yield idx.tolist()

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start)


class EpochBatches:
    """Index batches of one split. `epoch(e, start)` yields (batch_index, batch) from `start` on."""

    def __init__(self, data: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, collate=None, drop_last: bool | None = None):
        self.sampler = EpochSampler(len(data), batch_size, shuffle, seed, rank, world, drop_last)
        self.device, self.global_batch, self.num_batches = device, self.sampler.global_batch, self.sampler.num_batches
        self.tensor = isinstance(data, TensorSplit)
        if self.tensor:
            self.data = data.to(device)
        else:
            self.data = data
            workers = getattr(data, "num_workers", 0)
            self.loader = DataLoader(data, batch_sampler=self.sampler, collate_fn=collate, num_workers=workers,
                                     pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                     generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, start: int = 0):
        if self.tensor:
            tensors, move = self.data.tensors, self.device.type != "cpu"
            for i, idx in self.sampler.index_batches(epoch, start):
                if move:
                    idx = idx.to(self.device, non_blocking=True)
                yield i, {k: v[idx] for k, v in tensors.items()}
        else:
            self.sampler.set_epoch(epoch, start)
            for i, batch in enumerate(self.loader, start):
                yield i, to_device(batch, self.device)
