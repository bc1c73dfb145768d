"""The optimizer a run names (train.optimizer): AdamW, or Muon for the hidden matrices with AdamW for the rest."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.config import TrainConfig

ADAMW_BETAS = (0.9, 0.95)


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` and ``torch.optim.AdamW`` stepped as one optimizer.

    ``param_groups`` are the two optimizers' own group dicts, so one learning-rate scheduler drives both
    (Muon's ``match_rms_adamw`` scaling lets it share AdamW's learning rate and weight decay). The state
    dict holds each one's state dict.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = {"muon": muon, "adamw": adamw}
        self.defaults = {}
        self.state = {}  # each part keeps its own

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The parts' groups, looked up each time: loading a state dict gives a part new group dicts."""
        return [group for part in self.parts.values() for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = True) -> torch.optim.Optimizer:
    """Weight decay on weight matrices only (not on biases or norm gains), at ``cfg.learning_rate``.

    muon: Muon for the 2-D weights inside the transformer blocks; AdamW for the embedding (tied to the
    output head, so also the head), the norms and the biases, which Muon is not meant for.
    """
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    if cfg.optimizer == "adamw":
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=ADAMW_BETAS, fused=fused or None)
    hidden = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks.")]
    hidden_ids = {id(p) for p in hidden}
    muon = torch.optim.Muon(hidden, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    rest = [{"params": [p for p in matrices if id(p) not in hidden_ids], "weight_decay": cfg.weight_decay},
            {"params": vectors, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(rest, lr=cfg.learning_rate, betas=ADAMW_BETAS, fused=fused or None)
    return MuonWithAdamW(muon, adamw)
