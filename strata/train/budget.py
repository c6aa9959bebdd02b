"""A model too big for the machine is refused before a byte of it is allocated.

The task is first built on PyTorch's meta device (shapes, no storage), so `hidden = [1000000000]` costs
nothing to count: a model whose weights, gradients and optimiser state would not fit in the device's
memory is a config error naming its parameter count and the memory it needs, instead of an allocator
traceback or the kernel's out-of-memory killer minutes later.
"""

from __future__ import annotations

import os
import warnings

import torch

from strata.errors import ConfigError
from strata.tasks import build_task
from strata.train.checkpoint import rng_state, set_rng_state

# Training holds the weights, their gradients and Adam's two moments: four float32 copies.
TRAINING_COPIES = 4


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on `device` (the machine's RAM for the CPU); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB"


def build_within_memory(cfg, info: dict, device: torch.device, copies: int = TRAINING_COPIES, shards: int = 1):
    """build_task(cfg, info), once a meta-device build has shown that `copies` float32 copies of its
    parameters, split `shards` ways (FSDP), fit in `device`'s memory."""
    if cfg.task.module is None and cfg.model.module is None:
        state = rng_state()
        try:
            # a pretrained part loading its checkpoint into meta tensors warns that the copy is a no-op
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = build_task(cfg, info)
            n = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
        except Exception as e:  # noqa: BLE001 - a model the meta device cannot build: the real build speaks
            if isinstance(e, OverflowError) or "overflow" in str(e).lower():
                raise ConfigError(f"[model]: its layer sizes overflow ({str(e).splitlines()[0]}); lower the widths") \
                    from None
            n = None
        finally:
            set_rng_state(state)
        memory = device_memory(device)
        if n is not None and memory is not None and 4 * n * copies / shards > memory:
            what = "its weights, gradients and optimiser state" if copies > 1 else "its weights"
            split = f" split over {shards} processes" if shards > 1 else ""
            fix = "lower the layer widths" + ("" if shards > 1 else ", or shard it over several GPUs "
                                              "([trainer] strategy = \"fsdp\" under torchrun)")
            raise ConfigError(f"[model]: {n:,} parameters would need {_gb(4 * n * copies / shards)} for {what} in "
                              f"float32{split}, more than the {_gb(memory)} of {device}; {fix}")
    return build_task(cfg, info)
