"""The train and validate stages as DVC runs them, with their outputs and exit codes."""

import json
from dataclasses import replace

import pytest
import torch

from src import paths
from src.config import load_config
from src.pipeline.validate import failed_measures, quality_verdict, repetition_rate, sample_seed, whitespace_share
from tests.conftest import REPO_ROOT, TINY_PARAMS, poison_epoch_1, run_module, write_params


def test_train_writes_the_models_and_metrics(tiny_pipeline):
    train = json.loads((tiny_pipeline / paths.TRAIN_METRICS).read_text())["train"]
    assert train["epochs"] == TINY_PARAMS["epochs"]
    assert train["best_validation_loss"] <= train["final_validation_loss"] < 7
    for key in ("final_train_loss", "best_validation_bits_per_byte"):
        assert train[key] > 0, key
    assert set(train["environment"]) == {"device", "threads", "workers", "torch", "precision", "attention",
                                         "compile", "precision_choice", "attention_choice",
                                         "compile_choice"}
    speed = json.loads((tiny_pipeline / paths.TRAIN_SPEED).read_text())["train_speed"]
    assert speed["seconds"] > 0 and speed["tokens_per_sec"] > 0
    seed_shape = json.loads((tiny_pipeline / paths.TRAINING_METRICS).read_text())
    assert len(seed_shape["history"]) == TINY_PARAMS["epochs"]  # train.eval_every_steps 0: at epoch ends
    assert [row["epoch"] for row in seed_shape["epoch_history"]] == [1, 2]
    assert {"train_loss", "validation_loss", "epoch_seconds"} <= set(seed_shape["epoch_history"][0])
    assert "total_training_time" in seed_shape["final_metrics"]
    evaluations = json.loads((tiny_pipeline / paths.EVAL_PLOT).read_text())
    assert [row["epoch"] for row in evaluations] == [1, 2] and set(evaluations[0]) == {
        "step", "epoch", "tokens", "seconds", "validation_loss", "validation_bits_per_byte"}
    assert evaluations[1]["step"] == 2 * evaluations[0]["step"]
    assert evaluations[1]["seconds"] > evaluations[0]["seconds"] > 0
    logged = json.loads((tiny_pipeline / paths.TRAIN_PLOT).read_text())  # the training loss every 10 steps, and last
    total = evaluations[1]["step"]
    assert [row["step"] for row in logged] == sorted({*range(10, total + 1, 10), total})
    assert set(logged[0]) == {"step", "epoch", "tokens", "seconds", "train_loss", "learning_rate"}
    best = torch.load(tiny_pipeline / paths.BEST_MODEL, weights_only=True)
    assert best["training_state"]["best_validation_loss"] == pytest.approx(train["best_validation_loss"], abs=1e-6)
    assert (tiny_pipeline / paths.FINAL_MODEL).is_file()
    assert {p.name for p in (tiny_pipeline / paths.CHECKPOINT_DIR).glob("*.pt")} == {"best.pt", "last.pt"}
    assert {p.name for p in (tiny_pipeline / paths.PERIODIC_DIR).glob("checkpoint_epoch_*.pt")} == {
        "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"}


def test_train_without_tokens_exits_1(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    done = run_module("src.pipeline.train", tmp_path)
    assert done.returncode == 1 and "run `dvc repro tokenize` (or `dvc pull`) first" in done.stderr


def test_a_nan_loss_exits_4_and_keeps_the_last_good_checkpoint(tiny_copy):
    poisoned = poison_epoch_1(tiny_copy, "blocks.0.mlp.up.weight", float("inf"))
    before = poisoned.read_bytes()
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 4, done.stderr
    assert "loss became" in done.stderr and "at epoch 2, step 1 " in done.stderr and "lower learning_rate" in done.stderr
    assert poisoned.read_bytes() == before


def test_validate_passes_and_writes_samples_and_metrics(tiny_copy):
    done = run_module("src.pipeline.validate", tiny_copy)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tiny_copy / paths.VALIDATE_METRICS).read_text())["validate"]
    assert metrics["passed"] is True
    assert set(metrics["budgets"]) == {"rss_mb", "peak_mb", "latency_p95_ms"}
    assert metrics["budgets"]["rss_mb"]["limit"] == 64 and metrics["budgets"]["rss_mb"]["passed"] is True
    for key in ("latency_p50_ms", "time_to_first_token_ms", "tokens_per_sec"):
        assert metrics[key] > 0, key
    assert all(budget["value"] > 0 for budget in metrics["budgets"].values())
    for language in ("en", "es"):
        verdict = metrics["quality"][language]
        assert set(verdict) == {"repetition_rate", "whitespace_share", "unknown_share", "language_share",
                                "detected_languages", "passed"}
        assert len(verdict["detected_languages"]) == 5  # validate.samples_per_language
        assert verdict["language_share"]["mean"] == verdict["detected_languages"].count(language) / 5
        assert verdict["whitespace_share"]["worst"] >= verdict["whitespace_share"]["mean"]
    samples = json.loads((tiny_copy / paths.SAMPLES).read_text())
    assert samples["en"]["prompt"] == "It is a truth universally acknowledged"
    assert len(samples["es"]["samples"]) == 5 and all(sample["text"] for sample in samples["es"]["samples"])
    assert len({sample["seed"] for language in samples.values() for sample in language["samples"]}) == 10


def test_validate_exits_5_over_budget_after_writing_the_metrics(tiny_copy):
    write_params(tiny_copy, {"validate.budgets.rss_mb": 5, "validate.budgets.latency_p95_ms": 0.000001})
    done = run_module("src.pipeline.validate", tiny_copy)
    assert done.returncode == 5
    assert "rss_mb" in done.stderr and "latency_p95_ms" in done.stderr
    metrics = json.loads((tiny_copy / paths.VALIDATE_METRICS).read_text())["validate"]
    assert metrics["passed"] is False and metrics["budgets"]["rss_mb"]["passed"] is False
    assert metrics["budgets"]["peak_mb"]["passed"] is True


def test_validate_without_a_bundle_exits_1(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    done = run_module("src.pipeline.validate", tmp_path)
    assert done.returncode == 1 and "dist/tinytransformer not found: run `dvc repro bundle`" in done.stderr


def test_the_same_model_gets_the_same_verdict_in_repeated_fresh_processes(tiny_copy):
    write_params(tiny_copy, {"validate.samples_per_language": 3})
    runs = []
    for _ in range(3):
        done = run_module("src.pipeline.validate", tiny_copy)
        metrics = json.loads((tiny_copy / paths.VALIDATE_METRICS).read_text())["validate"]
        runs.append((done.returncode, metrics["passed"], metrics["quality"],
                     json.loads((tiny_copy / paths.SAMPLES).read_text())))
    assert runs[0][0] in (0, 5) and runs[0] == runs[1] == runs[2]


def sample(repetition=0.0, whitespace=0.2, unknown=0.0, in_language=True):
    return {"repetition_rate": repetition, "whitespace_share": whitespace, "unknown_share": unknown,
            "detected_language": "es" if in_language else "en", "in_language": in_language}


def test_the_quality_verdict_is_on_the_mean_with_the_worst_sample_reported():
    cfg = replace(load_config(REPO_ROOT / "params.yaml").validate, max_repetition=0.5, max_unknown_share=0.05,
                  max_whitespace_share=0.4, min_language_share=0.6)
    # One sample far over the byte-piece limit (the 0.094 of the issue), its mean within it: passed.
    lucky = quality_verdict([sample(unknown=0.094)] + [sample()] * 4, cfg)
    assert lucky["unknown_share"] == {"mean": 0.0188, "worst": 0.094, "max": 0.05, "passed": True}
    assert lucky["passed"] is True
    # Most samples over it: failed, and the message says which measure.
    unlucky = quality_verdict([sample(unknown=0.094)] * 3 + [sample()] * 2, cfg)
    assert unlucky["passed"] is False and failed_measures(unlucky) == "unknown_share mean 0.0564 > 0.05"
    # Language: the share of samples read as the language, at least min_language_share.
    mixed = quality_verdict([sample(in_language=False)] * 2 + [sample()] * 3, cfg)
    assert mixed["language_share"] == {"mean": 0.6, "worst": 0.0, "min": 0.6, "passed": True}
    assert mixed["detected_languages"] == ["en", "en", "es", "es", "es"]
    wrong = quality_verdict([sample(in_language=False)] * 3 + [sample(whitespace=0.9)] * 2, cfg)
    assert failed_measures(wrong) == "whitespace_share mean 0.48 > 0.4, language_share mean 0.4 < 0.6"


def test_each_sample_has_its_own_seed_the_same_on_every_run():
    seeds = [sample_seed(1337, language, index) for language in ("en", "es") for index in range(5)]
    assert len(set(seeds)) == 10 and all(0 <= seed < 2**64 for seed in seeds)
    assert seeds[0] == sample_seed(1337, "en", 0) != sample_seed(1338, "en", 0)
    assert sample_seed(1337, "en", 0) == 1002281202700109621  # derived from the seed alone: any process, any machine


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
