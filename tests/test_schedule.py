"""Linear warmup, then cosine decay or warmup-stable-decay to a floor."""

import pytest
import torch

import dataclasses

from src.training.schedule import cosine_factor as lr_factor
from src.training.schedule import make_scheduler, wsd_factor
from tests.conftest import TRAIN


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
    scheduler = make_scheduler(optimizer, dataclasses.replace(TRAIN, warmup_steps=2, min_lr_ratio=0.5), 6)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.005, 0.01, 0.01])
    assert rates[3] < rates[2] and rates[-1] >= 0.005


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    factors = [wsd_factor(s, 10, 110, 0.1, 0.2) for s in range(110)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10:88] == [1.0] * 78  # the stable part: 110 - 22 steps of decay
    decay = factors[88:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(0.1)
    assert decay[0] == pytest.approx(1 - 0.9 / 22)


def test_the_schedule_is_the_param():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    wsd = make_scheduler(optimizer, dataclasses.replace(TRAIN, schedule="wsd", warmup_steps=0), 10)
    rates = []
    for _ in range(10):
        optimizer.step()
        wsd.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:7] == [1.0] * 7 and rates[-1] == pytest.approx(0.1)
