"""train.precision: auto measures the machine's matrix products once, caches the verdict and records why."""

import json

import pytest
import torch

from src.model.transformer import ModelShape
from src.training import precision
from src.training.precision import resolve_precision, step_products

SHAPE = ModelShape(vocab_size=500, n_layers=2, n_heads=2, d_model=32, d_ff=64, context_length=16, dropout=0.0)
CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    return tmp_path / "precision.json"


def test_a_set_precision_is_used_as_set(cache):
    assert resolve_precision("fp32", CPU, SHAPE, 256) == ("fp32", "train.precision: fp32")
    assert resolve_precision("bf16", CPU, SHAPE, 256)[0] == "bf16" and not cache.exists()


@pytest.mark.parametrize("fp32_s, bf16_s, chosen", [(2.0, 1.0, "bf16"), (1.0, 2.0, "fp32"), (1.1, 1.0, "fp32")])
def test_auto_takes_bf16_only_when_clearly_faster_and_measures_once(cache, monkeypatch, fp32_s, bf16_s, chosen):
    calls = []
    monkeypatch.setattr(precision, "measure", lambda shape, tokens: calls.append(1) or {"fp32": fp32_s, "bf16": bf16_s})
    first = resolve_precision("auto", CPU, SHAPE, 256)
    again = resolve_precision("auto", CPU, SHAPE, 256)
    assert first == again and first[0] == chosen and len(calls) == 1
    assert f"{fp32_s / bf16_s:.2f}x" in first[1] and str(cache) in first[1]
    assert [v["precision"] for v in json.loads(cache.read_text()).values()] == [chosen]


def test_a_damaged_cache_is_measured_again(cache):
    cache.write_text("{not json")
    chosen, reason = resolve_precision("auto", CPU, SHAPE, 256)
    assert chosen in ("bf16", "fp32") and reason.startswith("auto: bf16 products")
    assert json.loads(cache.read_text())


def test_the_measured_products_are_the_steps():
    forward = step_products(SHAPE, 256)[:5]
    assert forward == [(256, 32, 96), (256, 32, 32), (256, 32, 64), (256, 64, 32), (256, 32, 500)]
    assert len(step_products(SHAPE, 256)) == 15
