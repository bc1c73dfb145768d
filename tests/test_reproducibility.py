"""Same commit, same params, same machine: the same model, bit for bit (the train stage, in real processes).

Each run trains the tiny model on one short book (tests/test_faults.py's FAULT_PARAMS) from scratch; the runs
must agree on every computed figure of metrics/train.json and on every weight of the models and checkpoints. Two
threads at least: the nondeterminism these tests guard against came from threads adding up one sum at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from src.training.step import deterministic_algorithms
from tests.conftest import REPO_ROOT, remove_checkpoints, run_module, write_params
from tests.test_faults import FAULT_PARAMS

MODELS = ("data/best_model.pt", "data/final_model.pt", "data/checkpoints/last.pt")
EXPORTS = ("data/best_model.pt", "data/final_model.pt")
KILL_ENV = {"PYTHONPATH": f"{REPO_ROOT / 'tests' / 'fault_injection'}:{REPO_ROOT}"}


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, shared_corpus) -> Path:
    """FAULT_PARAMS' corpus and tokenizer, ready for the train stage."""
    workdir = tmp_path_factory.mktemp("reproducibility")
    write_params(workdir, FAULT_PARAMS)
    for stage in ("download", "tokenize"):
        done = run_module(f"src.pipeline.{stage}", workdir, env={"TT_CORPUS_MIRROR": str(shared_corpus)})
        assert done.returncode == 0, done.stderr
    return workdir


def weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, weights_only=True)["model"].items():
        digest.update(name.encode() + tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_afresh(workdir: Path, cache: Path, env: dict | None = None):
    """The train stage from scratch, with ``cache`` as torch.compile's cache; its figures and weights."""
    done = run_module("src.pipeline.train", workdir, env={"TT_TRAIN_FRESH": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache),
                                                          "OMP_NUM_THREADS": "2", **(env or {})})
    assert done.returncode == 0, done.stderr
    return outcome(workdir)


def outcome(workdir: Path):
    """The figures, the weights, and the exported models' bytes (the checkpoints also hold timings)."""
    history = [json.loads((workdir / f"metrics/{name}.json").read_text()) for name in ("train_history", "eval_history")]
    return (json.loads((workdir / "metrics/train.json").read_text())["train"],
            [[{key: value for key, value in row.items() if key != "seconds"} for row in rows]  # seconds: timings
             for rows in history],
            {name: weights_sha256(workdir / name) for name in MODELS},
            {name: hashlib.sha256((workdir / name).read_bytes()).hexdigest() for name in EXPORTS})


@pytest.mark.slow
def test_the_default_settings_repeat_with_a_cold_and_a_warm_compile_cache_and_across_a_kill(tokenized, tmp_path):
    write_params(tokenized, {"train.precision": "auto", "train.compile": True})  # compiled: cold and warm caches
    cold = train_afresh(tokenized, tmp_path / "cache")
    assert cold[0]["environment"]["threads"] == 2 and cold[0]["environment"]["compile"] is True
    warm = train_afresh(tokenized, tmp_path / "cache")
    assert warm == cold

    # Killed after epoch 2 is trained, before its first checkpoint is written (the 4th file the stage renames into
    # place: best, epoch_0001, last, then epoch 2's best); then resumed from epoch 1.
    remove_checkpoints(tokenized)
    killed = run_module("src.pipeline.train", tokenized, env={
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2",
        **KILL_ENV, "TT_KILL_AT_RENAME": "train:4:before"})
    assert killed.returncode == -9, killed.stderr
    resumed = run_module("src.pipeline.train", tokenized, env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
                                                               "OMP_NUM_THREADS": "2"})
    assert resumed.returncode == 0 and "resuming after epoch 1 of 2" in resumed.stderr, resumed.stderr
    assert outcome(tokenized) == cold


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
@pytest.mark.parametrize("compiled", [True, False])
def test_every_precision_and_compile_setting_repeats(tokenized, tmp_path, precision, compiled):
    write_params(tokenized, {"train.precision": precision, "train.compile": compiled})
    first = train_afresh(tokenized, tmp_path / "cache")
    assert train_afresh(tokenized, tmp_path / "cache") == first


def test_deterministic_algorithms_hold_only_while_training():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.slow
def test_a_step_budget_killed_within_an_epoch_resumes_to_the_same_weights(tokenized, tmp_path):
    """A budget ending within epoch 2, the resume point every 10 steps: SIGKILL right after the second one (step
    20, within epoch 1: the fifth file renamed into place, after last.pt at step 10 and the plots and best.pt of
    the evaluation at step 15); the stage run again ends with the uninterrupted run's figures and weights, bit for
    bit."""
    budget = {"train.max_steps": 45, "train.checkpoint_every_steps": 10, "train.eval_every_steps": 15,
              "train.precision": "fp32", "train.compile": False}
    write_params(tokenized, budget)
    uninterrupted = train_afresh(tokenized, tmp_path / "cache")
    assert uninterrupted[0]["steps"] == 45 and uninterrupted[0]["epochs"] < 2
    remove_checkpoints(tokenized)
    killed = run_module("src.pipeline.train", tokenized, env={"OMP_NUM_THREADS": "2", **KILL_ENV,
                                                              "TT_KILL_AT_RENAME": "train:5:after"})
    assert killed.returncode == -9, killed.stderr
    assert torch.load(tokenized / "data/checkpoints/last.pt", weights_only=True)["training_state"]["step"] == 20
    resumed = run_module("src.pipeline.train", tokenized, env={"OMP_NUM_THREADS": "2"})
    assert resumed.returncode == 0 and "resuming after epoch 0 of 2 (step 20 of 45)" in resumed.stderr, resumed.stderr
    assert outcome(tokenized) == uninterrupted
