"""Batches for the trainer, resumable at any position.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), never from the
global RNG, so a run resumed mid-epoch replays exactly the batches it had not yet seen. With several
processes, global batch i is perm[i*G:(i+1)*G] (G = batch_size * world) and rank r takes its
contiguous slice of it: the same examples, in the same global batches, as one process with batch G.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from strata.data.base import TensorSplit


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class EpochBatches:
    """Index batches of one split. `epoch(e, start)` yields (batch_index, batch) from `start` on."""

    def __init__(self, data: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, collate=None, drop_last: bool | None = None):
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, device
        self.global_batch = batch_size * world
        n = len(data)
        if drop_last is None:
            drop_last = shuffle and world > 1
        self.drop_last = drop_last
        self.n = n
        self.tensor = isinstance(data, TensorSplit)
        if self.tensor:
            self.data = data.to(device)
        else:
            self.data = data
            self.collate = collate
        if shuffle:
            # a last batch of a single example is dropped too: batch norm cannot train on one example
            drop_last = drop_last or n % self.global_batch == 1
            self.num_batches = n // self.global_batch if drop_last else math.ceil(n / self.global_batch)
        else:
            # evaluation: rank r sees examples r, r+world, ... (each exactly once overall)
            self.num_batches = math.ceil(math.ceil((n - rank) / world) / batch_size) if n > rank else 0

    def __len__(self) -> int:
        return self.num_batches

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.world)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def _index_batches(self, epoch: int, start: int):
        order = self._order(epoch)
        for i in range(start, self.num_batches):
            if self.shuffle:
                glob = order[i * self.global_batch:(i + 1) * self.global_batch]
                per = math.ceil(len(glob) / self.world)
                idx = glob[self.rank * per:(self.rank + 1) * per]
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield i, idx

    def epoch(self, epoch: int, start: int = 0):
        if self.tensor:
            tensors = self.data.tensors
            for i, idx in self._index_batches(epoch, start):
                if self.device.type != "cpu":
                    idx = idx.to(self.device, non_blocking=True)
                yield i, {k: v[idx] for k, v in tensors.items()}
        else:
            index_lists = [(i, idx.tolist()) for i, idx in self._index_batches(epoch, start)]
            loader = DataLoader(self.data, batch_sampler=[idx for _, idx in index_lists], collate_fn=self.collate,
                                pin_memory=self.device.type == "cuda")
            for (i, _), batch in zip(index_lists, loader):
                yield i, to_device(batch, self.device)
