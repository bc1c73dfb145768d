"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay, down to a floor."""

from __future__ import annotations

import math
from functools import partial

import torch

from src.config import TrainConfig


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based): warmup, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def wsd_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float, decay_fraction: float) -> float:
    """Warmup, then the peak held, then a linear decay to ``min_ratio`` over the last ``decay_fraction`` of steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(round(total_steps * decay_fraction), 1)
    decay_start = max(total_steps - decay_steps, warmup_steps)
    if step < decay_start:
        return 1.0
    progress = min((step - decay_start + 1) / max(total_steps - decay_start, 1), 1.0)
    return 1.0 - (1.0 - min_ratio) * progress


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule ``cfg.schedule`` names, over ``total_steps`` optimizer steps."""
    if cfg.schedule == "wsd":
        factor = partial(wsd_factor, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                         min_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
    else:
        factor = partial(cosine_factor, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                         min_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
