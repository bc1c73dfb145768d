"""The checkpoints of a run: the resume point, what is set aside, and the files a finished run leaves, whatever a
crash or a user did to them (src/training/checkpointing.py, on the synthetic data of tests/conftest.py)."""

import dataclasses
import hashlib
import json
import logging
import re
import shutil

import pytest
import torch

from src.model.checkpoint import load_checkpoint, save_checkpoint
from src.training.checkpointing import SAME_NUMERICS
from tests.conftest import MODEL, TRAIN, run


@pytest.fixture
def finished(synthetic_tokens, tmp_path):
    """The checkpoint folder of an uninterrupted 3-epoch run, kept as the reference."""
    run(synthetic_tokens, tmp_path / "finished")
    return tmp_path / "finished"


def copy_of(finished, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(finished, target)
    return target


def same_state(a, b) -> bool:
    """Two checkpoints hold the same epoch and the same weights."""
    first, second = load_checkpoint(a), load_checkpoint(b)
    return first["epoch"] == second["epoch"] and all(
        torch.equal(tensor, second["model"][name]) for name, tensor in first["model"].items())


def assert_finished_like(folder, finished):
    """last.pt and best.pt are those of the uninterrupted run."""
    for name in ("last.pt", "best.pt"):
        assert same_state(folder / name, finished / name), name


def test_a_crash_between_the_last_epochs_writes_is_finished_by_the_next_run(synthetic_tokens, finished, tmp_path):
    """Killed after epoch 3's best.pt and checkpoint_epoch_3.pt, before its last.pt: last.pt still holds epoch 2."""
    folder = copy_of(finished, tmp_path)
    shutil.copy(folder / "checkpoint_epoch_2.pt", folder / "last.pt")
    result = run(synthetic_tokens, folder)
    assert result.resumed_from_epoch == 3 and len(result.state.history) == 3  # nothing trained again
    assert_finished_like(folder, finished)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
@pytest.mark.parametrize("name", ["last.pt", "best.pt", "checkpoint_epoch_3.pt"])
def test_a_lost_checkpoint_of_a_finished_run_is_rebuilt_from_another_of_its_epoch(synthetic_tokens, finished,
                                                                                  tmp_path, name, damage):
    folder = copy_of(finished, tmp_path)
    if damage == "delete":
        (folder / name).unlink()
    else:
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])
    result = run(synthetic_tokens, folder)
    assert result.resumed_from_epoch == 3
    assert_finished_like(folder, finished)


def test_when_no_checkpoint_holds_the_best_step_the_run_trains_it_again(synthetic_tokens, finished, tmp_path,
                                                                       caplog):
    """The newest checkpoints say epoch 2's end (step 46) was the best, and its checkpoints are gone: resume from
    epoch 1's (step 23)."""
    folder = copy_of(finished, tmp_path)
    for name in ("best.pt", "checkpoint_epoch_2.pt"):
        (folder / name).unlink()
    for name in ("last.pt", "checkpoint_epoch_3.pt"):
        state = load_checkpoint(folder / name)
        state["training_state"].update(best_step=46, best_epoch=2.0)
        save_checkpoint(folder / name, state)
    with caplog.at_level(logging.WARNING):
        result = run(synthetic_tokens, folder)
    assert "no checkpoint holds step 46, the best one: resuming from step 23" in caplog.text
    assert result.resumed_from_epoch == 1
    assert_finished_like(folder, finished)


def test_leftovers_of_interrupted_writes_are_removed(synthetic_tokens, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    (folder / ".last.pt.4242.part").write_bytes(b"half of a checkpoint")
    run(synthetic_tokens, folder)
    assert not list(folder.glob(".*.part"))


def test_a_checkpoint_of_another_recipe_is_set_aside_not_resumed(synthetic_tokens, tmp_path, caplog):
    checkpoints = tmp_path / "ckpt"
    run(synthetic_tokens, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    changed = dataclasses.replace(TRAIN, epochs=1, learning_rate=0.02)
    with caplog.at_level(logging.WARNING):
        result = run(synthetic_tokens, checkpoints, changed)
    assert result.resumed_from_epoch == 0
    assert "made with different params" in caplog.text and "training starts fresh" in caplog.text
    first = (checkpoints / "set_aside" / "last.pt").read_bytes()  # kept, never deleted
    run(synthetic_tokens, checkpoints, dataclasses.replace(changed, learning_rate=0.03))
    assert (checkpoints / "set_aside" / "last.pt").read_bytes() == first  # nor replaced by the next one
    assert load_checkpoint(checkpoints / "set_aside" / "last.1.pt")["epoch"] == 1


def test_bookkeeping_params_do_not_change_the_recipe(synthetic_tokens, tmp_path):
    checkpoints = tmp_path / "ckpt"
    run(synthetic_tokens, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    result = run(synthetic_tokens, checkpoints, dataclasses.replace(TRAIN, epochs=1, checkpoint_every=5, plateau_loss=3.0))
    assert result.resumed_from_epoch == 1 and len(result.state.history) == 1


def test_an_unreadable_checkpoint_is_set_aside(synthetic_tokens, tmp_path):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"half a checkpoint")
    result = run(synthetic_tokens, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    assert result.resumed_from_epoch == 0
    assert (checkpoints / "set_aside" / "last.pt").read_bytes() == b"half a checkpoint"


def params_digest_of_27c74df(train_cfg) -> str:
    """The params digest 27c74df gave a run: its train params (evaluation interval included) but its bookkeeping."""
    earlier = ("epochs", "batch_size", "learning_rate", "max_seq_length", "seed", "weight_decay", "optimizer",
               "schedule", "warmup_steps", "min_lr_ratio", "decay_fraction", "grad_clip", "eval_batch_size",
               "eval_every_steps", "precision", "attention")
    shaping = {"model": dataclasses.asdict(MODEL), "train": {k: getattr(train_cfg, k) for k in earlier}}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def legacy(folder, code_digest: str) -> None:
    """``folder`` as the version before the quickstart's names left it: periodic checkpoints named epoch_NNNN.pt,
    every fingerprint's code digest ``code_digest`` (that version hashed all of its training code), its params
    digest of that version's params, and its progress in that version's form (the best as an epoch, no log rows,
    the timings a list)."""
    for path in folder.glob("*.pt"):
        state = load_checkpoint(path)
        state["fingerprint"]["code"] = code_digest
        state["fingerprint"]["params"] = params_digest_of_27c74df(TRAIN)
        saved = state["training_state"]
        state["training_state"] = {"epoch": saved["epoch"], "step": saved["step"], "history": saved["history"],
                                   "best_epoch": int(saved["best_epoch"]),
                                   "best_validation_loss": saved["best_validation_loss"]}
        state["timings"] = state["timings"]["rows"]
        match = re.fullmatch(r"checkpoint_epoch_(\d+)\.pt", path.name)
        save_checkpoint(folder / (f"epoch_{int(match.group(1)):04d}.pt" if match else path.name), state)
        if match:
            path.unlink()


def test_a_run_of_the_version_before_the_rename_carries_on_where_it_stopped(synthetic_tokens, finished, tmp_path):
    """Its checkpoints' code digest is one SAME_NUMERICS lists, and its periodic checkpoints move to their names."""
    folder = copy_of(finished, tmp_path)
    legacy(folder, next(iter(SAME_NUMERICS)))
    shutil.copy(folder / "epoch_0002.pt", folder / "last.pt")  # interrupted during epoch 3
    (folder / "epoch_0003.pt").unlink()
    (folder / "best.pt").unlink()
    result = run(synthetic_tokens, folder)
    assert result.resumed_from_epoch == 2 and not list(folder.glob("epoch_*.pt"))
    assert sorted(p.name for p in folder.glob("checkpoint_epoch_*.pt")) == [
        "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt"]
    assert_finished_like(folder, finished)
    assert [row["validation_loss"] for row in result.state.history] == [
        row["validation_loss"] for row in load_checkpoint(finished / "last.pt")["training_state"]["history"]]


def test_a_checkpoint_of_other_training_code_is_set_aside(synthetic_tokens, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    legacy(folder, "0" * 64)
    result = run(synthetic_tokens, folder)
    assert result.resumed_from_epoch == 0
    assert (folder / "set_aside" / "last.pt").is_file()

