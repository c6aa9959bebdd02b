"""Where a run computes and how it is seeded: shared by training and inference, which need no trainer."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from strata.errors import ConfigError


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """auto: this process's CUDA GPU under torchrun (LOCAL_RANK), else MPS, else the CPU."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local}")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but this torch build sees no CUDA GPU; use --device cpu "
                          "or install a CUDA build of torch")
    if name == "cuda":  # under torchrun, each process takes its own GPU
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is unknown; use auto, cpu, cuda, cuda:N or mps") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
