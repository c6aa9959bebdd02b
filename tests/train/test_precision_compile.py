"""Opt-in engine features on CPU: bf16 autocast trains as well as fp32; torch.compile too (its
C++ code generation takes minutes on 2 cores, so that case runs only with STRATA_SLOW_TESTS=1)."""

from __future__ import annotations

import os

import pytest

from strata.api import train
from strata.errors import ConfigError

CONFIG = {
    "name": "precision",
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "cnn", "channels": [8, 16], "fc_hidden": 32},
    "task": {"name": "classify"},
    "optimizer": {"name": "adamw", "lr": 0.005},
    "trainer": {"max_epochs": 3, "progress": "off"},
}


SLOW = pytest.mark.skipif(not os.environ.get("STRATA_SLOW_TESTS"), reason="torch.compile: set STRATA_SLOW_TESTS=1")


@pytest.mark.parametrize("overrides", [["trainer.precision='bf16'"], pytest.param(["trainer.compile=true"], marks=SLOW)])
def test_opt_in_engine_features_train_on_cpu(tmp_path, overrides):
    res = train(CONFIG, overrides, run_dir=tmp_path / "run", device="cpu")
    assert res.summary["test/acc"] > 0.85  # chance is 0.10


def test_fp16_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        train(CONFIG, ["trainer.precision='fp16'"], run_dir=tmp_path / "run", device="cpu")


def test_fp16_loss_scaling_unscales_before_clipping_and_skips_a_step_with_inf_gradients():
    import torch
    from torch import nn

    from strata.train.precision import Precision

    p = Precision("fp16", torch.device("cpu"))  # the trainer asks CUDA for fp16; the scaler's logic runs anywhere
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    p.backward((w * 3).sum())
    assert torch.equal(w.grad, torch.full((2,), 3.0 * 2**16))  # the loss was scaled by 65536
    p.unscale_(opt)
    assert torch.equal(w.grad, torch.full((2,), 3.0))  # true gradients, ready for clipping
    p.step(opt)
    p.update()
    assert torch.allclose(w.detach(), torch.full((2,), 0.7))
    opt.zero_grad()
    p.backward((w * float("inf")).sum())
    p.step(opt)  # inf gradients: the step is skipped and the scale halves
    p.update()
    assert torch.allclose(w.detach(), torch.full((2,), 0.7)) and p.state_dict()["scale"] == 2.0**15
    fp32 = Precision("fp32", torch.device("cpu"))
    assert fp32.state_dict() == {} and fp32.scaler is None
