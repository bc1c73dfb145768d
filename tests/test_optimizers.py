"""train.optimizer: AdamW, or Muon for the hidden matrices with AdamW for the rest, driven as one optimizer."""

import dataclasses

import numpy as np

from src.model.transformer import ModelShape, TinyTransformer
from src.training.optimizers import make_optimizer
from tests.conftest import MODEL, TRAIN, VOCAB, run


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(synthetic_tokens, tmp_path):
    model = TinyTransformer(ModelShape.from_config(MODEL, VOCAB))
    optimizer = make_optimizer(model, dataclasses.replace(TRAIN, optimizer="muon"))
    muon, adamw = optimizer.parts["muon"], optimizer.parts["adamw"]
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for g in muon.param_groups for p in g["params"]) == sorted(
        name for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2)
    assert "embed.weight" in {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert optimizer.param_groups == [*muon.param_groups, *adamw.param_groups]  # one scheduler drives both
    result = run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, optimizer="muon"))
    history = result.state.history
    assert history[-1]["validation_loss"] < history[0]["validation_loss"] < np.log(VOCAB)
