"""The weight average: its update is d * shadow + (1 - d) * weights with the warm-up decay
d = min(decay, (1 + n) / (10 + n)), and buffers are copied."""

import pytest
import torch
from torch import nn

from strata.nn.ema import ema_copy, ema_update_


def test_update_is_the_warmed_up_moving_average_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    shadow = ema_copy(model)
    assert not any(p.requires_grad for p in shadow.parameters()) and not shadow.training
    expected = [p.detach().clone() for p in shadow.parameters()]
    for n in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves the batch-norm running statistics
        ema_update_(shadow, model, decay=0.9, updates=n)
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, shadow.parameters()):
        torch.testing.assert_close(p, e)
    torch.testing.assert_close(shadow[1].running_mean, model[1].running_mean)
    assert d == pytest.approx(0.9)  # the warm-up has ended: (1 + 99) / 109 > 0.9


def test_a_count_buffer_gives_the_same_average_as_a_python_count():
    """The tasks pass their 0-d count buffer (no host read a step); the average is bit-identical."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    by_int, by_tensor = ema_copy(model), ema_copy(model)
    count = torch.zeros((), dtype=torch.long)
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema_update_(by_int, model, decay=0.95, updates=n)
        ema_update_(by_tensor, model, decay=0.95, updates=count)
        count += 1
    for a, b in zip(by_int.parameters(), by_tensor.parameters()):
        assert torch.equal(a, b)
