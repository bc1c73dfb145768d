"""Linear warmup, then cosine decay to a floor."""

import pytest
import torch

from src.training.schedule import lr_factor, warmup_cosine


def test_warmup_rises_linearly_to_the_peak():
    assert [lr_factor(s, 4, 100, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_to_the_floor_and_stays_there():
    factors = [lr_factor(s, 10, 110, 0.1) for s in range(10, 130)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[50] == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert factors[100] == pytest.approx(0.1) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, 0, 10, 0.0) == 1.0


def test_the_scheduler_drives_the_optimizer():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, min_ratio=0.5)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.005, 0.01, 0.01])
    assert rates[3] < rates[2] and rates[-1] >= 0.005
