"""The train and validate stages as DVC runs them, with their outputs and exit codes."""

import json

import pytest
import torch

from src import paths
from src.pipeline.validate import repetition_rate, whitespace_share
from tests.conftest import TINY_PARAMS, poison_epoch_1, run_module, write_params


def test_train_writes_the_models_and_metrics(tiny_pipeline):
    train = json.loads((tiny_pipeline / paths.TRAIN_METRICS).read_text())["train"]
    assert train["epochs"] == TINY_PARAMS["epochs"]
    assert train["best_validation_loss"] <= train["final_validation_loss"] < 7
    for key in ("final_train_loss", "best_validation_bits_per_byte"):
        assert train[key] > 0, key
    assert set(train["environment"]) == {"device", "threads", "workers", "torch", "precision", "attention",
                                         "compile", "precision_choice", "attention_choice"}
    speed = json.loads((tiny_pipeline / paths.TRAIN_SPEED).read_text())["train_speed"]
    assert speed["seconds"] > 0 and speed["tokens_per_sec"] > 0
    seed_shape = json.loads((tiny_pipeline / paths.TRAINING_METRICS).read_text())
    assert len(seed_shape["history"]) == TINY_PARAMS["epochs"]
    assert {"train_loss", "validation_loss"} <= set(seed_shape["history"][0])
    assert "total_training_time" in seed_shape["final_metrics"]
    plot = json.loads((tiny_pipeline / paths.TRAIN_PLOT).read_text())
    assert [row["epoch"] for row in plot] == [1, 2] and set(plot[0]) == {
        "step", "epoch", "tokens", "seconds", "train_loss", "validation_loss", "learning_rate"}
    assert plot[1]["step"] == 2 * plot[0]["step"] and plot[1]["seconds"] > plot[0]["seconds"] > 0
    best = torch.load(tiny_pipeline / paths.BEST_MODEL, weights_only=True)
    assert best["training_state"]["best_validation_loss"] == pytest.approx(train["best_validation_loss"], abs=1e-6)
    assert (tiny_pipeline / paths.FINAL_MODEL).is_file()
    assert {p.name for p in (tiny_pipeline / paths.CHECKPOINT_DIR).glob("*.pt")} == {
        "best.pt", "last.pt", "epoch_0001.pt", "epoch_0002.pt"}


def test_train_without_tokens_exits_1(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    done = run_module("src.pipeline.train", tmp_path)
    assert done.returncode == 1 and "run `dvc repro tokenize` (or `dvc pull`) first" in done.stderr


def test_a_nan_loss_exits_4_and_keeps_the_last_good_checkpoint(tiny_copy):
    checkpoints = tiny_copy / paths.CHECKPOINT_DIR
    poison_epoch_1(checkpoints, "blocks.0.mlp.up.weight", float("inf"))
    before = (checkpoints / "epoch_0001.pt").read_bytes()
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 4, done.stderr
    assert "loss became" in done.stderr and "at epoch 2, step 1 " in done.stderr and "lower learning_rate" in done.stderr
    assert (checkpoints / "epoch_0001.pt").read_bytes() == before


def test_validate_passes_and_writes_samples_and_metrics(tiny_copy):
    done = run_module("src.pipeline.validate", tiny_copy)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tiny_copy / paths.VALIDATE_METRICS).read_text())
    assert metrics["passed"] is True
    assert set(metrics["budgets"]) == {"rss_mb", "peak_mb", "latency_p95_ms"}
    assert metrics["budgets"]["rss_mb"]["limit"] == 64 and metrics["budgets"]["rss_mb"]["passed"] is True
    for key in ("rss_mb", "peak_mb", "latency_p95_ms", "latency_p50_ms", "time_to_first_token_ms", "tokens_per_sec"):
        assert metrics[key] > 0, key
    samples = json.loads((tiny_copy / paths.SAMPLES).read_text())
    assert samples["en"]["prompt"] == "It is a truth universally acknowledged" and samples["en"]["text"]
    assert samples["es"]["detected_language"] == "es"


def test_validate_exits_5_over_budget_after_writing_the_metrics(tiny_copy):
    write_params(tiny_copy, {"validate.budgets.rss_mb": 5, "validate.budgets.latency_p95_ms": 0.000001})
    done = run_module("src.pipeline.validate", tiny_copy)
    assert done.returncode == 5
    assert "rss_mb" in done.stderr and "latency_p95_ms" in done.stderr
    metrics = json.loads((tiny_copy / paths.VALIDATE_METRICS).read_text())
    assert metrics["passed"] is False and metrics["budgets"]["rss_mb"]["passed"] is False
    assert metrics["budgets"]["peak_mb"]["passed"] is True


def test_validate_without_a_bundle_exits_1(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    done = run_module("src.pipeline.validate", tmp_path)
    assert done.returncode == 1 and "dist/tinytransformer not found: run `dvc repro bundle`" in done.stderr


def test_repetition_and_whitespace():
    assert repetition_rate("one two three four five six") == 0
    assert repetition_rate("a b c " * 20) > 0.9
    assert whitespace_share("a \n\n\n") == 0.8 and whitespace_share("") == 1.0


def test_data_too_small_for_one_batch_exits_1_before_training(tiny_copy):
    write_params(tiny_copy, {"max_seq_length": 8192, "batch_size": 4096})
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot fill one batch of batch_size=4096 windows of max_seq_length=8192 tokens" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
