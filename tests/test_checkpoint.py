"""Checkpoints: atomic saves, the safe loader, the content hash, and the checks before a model is built."""

import argparse
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from src.model.checkpoint import (CheckpointError, code_digest, export_model, load_checkpoint, load_model,
                                  save_checkpoint)
from src.model.transformer import ModelShape
from tests.conftest import TRAIN, VOCAB, run


@pytest.fixture
def checkpoint(synthetic_tokens, tmp_path) -> Path:
    """best.pt of a one-epoch run on the synthetic data."""
    return run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, epochs=1)).best_checkpoint


def test_checkpoints_round_trip_through_the_safe_loader(checkpoint):
    model, meta = load_model(checkpoint)
    assert not model.training and meta["epoch"] == 1 and set(meta["fingerprint"]) == {"data", "tokenizer", "params",
                                                                                          "code"}
    tokens = torch.randint(0, VOCAB, (2, 8))
    again, _ = load_model(checkpoint)
    assert torch.equal(model(tokens), again(tokens))


def test_the_loader_refuses_a_checkpoint_of_another_format(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    # Format 1 paired RoPE channels differently: its weights must not load silently.
    torch.save({**state, "format": 1}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt is of format 1; this version reads format 3: train again"):
        load_model(tmp_path / "old.pt")


def test_the_loader_refuses_what_is_not_plain_data(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": argparse.Namespace(code="would run on load")}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "cannot be pickled": lambda: None})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_code_digest_is_the_same_in_every_clone_and_covers_single_files(tmp_path):
    def clone(name: str) -> tuple[Path, Path]:
        package, module = tmp_path / name / "src" / "model", tmp_path / name / "src" / "dataset.py"
        package.mkdir(parents=True)
        (package / "transformer.py").write_text("WIDTH = 128\n")
        (package / "notes.txt").write_text("not code")
        module.write_text("WINDOW = 128\n")
        return package, module

    first, second = clone("here"), clone("elsewhere")
    assert code_digest(*first) == code_digest(*second)
    (second[0] / "notes.txt").write_text("other notes")
    assert code_digest(*first) == code_digest(*second)
    second[1].write_text("WINDOW = 64\n")
    assert code_digest(*first) != code_digest(*second)
    second[1].write_text("WINDOW = 128\n")
    (second[0] / "transformer.py").rename(second[0] / "model.py")
    assert code_digest(*first) != code_digest(*second)


MODULE = '''"""Attention."""

SCALE = 2  # the width of a head


class Head:
    """One head."""

    def score(self, query, key):
        """Dot product, scaled."""
        return query * key + SCALE
'''


@pytest.mark.parametrize("edit, same", [
    (("Attention.", "Causal self-attention."), True),
    (("One head.", "One head of attention."), True),
    (('"""Dot product, scaled."""', '"""Dot product."""\n        # scaled below'), True),
    (("# the width of a head", "# how wide a head is"), True),
    (("SCALE = 2", "SCALE  =  2"), True),
    (("query * key + SCALE", "query * key - SCALE"), False),
    (('"""One head."""', "WIDTH = 1"), False),
])
def test_the_code_digest_ignores_comments_and_docstrings_not_code(tmp_path, edit, same):
    module = tmp_path / "attention.py"
    module.write_text(MODULE)
    before = code_digest(module)
    assert MODULE.count(edit[0]) == 1
    module.write_text(MODULE.replace(*edit))
    assert (code_digest(module) == before) is same


def test_a_byte_changed_inside_a_tensor_is_refused(checkpoint):
    """A flipped byte in the weights still unpickles into a (slightly different) model: the content hash catches it."""
    data = bytearray(checkpoint.read_bytes())
    weights = torch.load(checkpoint, weights_only=True)["model"]["embed.weight"]
    needle = weights[7].numpy().tobytes()  # a row of the embedding, somewhere in the middle of the file
    at = data.index(needle) + 5
    data[at] ^= 0x40
    checkpoint.write_bytes(bytes(data))
    assert not torch.equal(torch.load(checkpoint, weights_only=True)["model"]["embed.weight"], weights)
    with pytest.raises(CheckpointError, match="is damaged: its content does not match the sha256"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 10**9, "'vocab_size' = 1000000000 is out of range"),
    ("context_length", 10**9, "'max_seq_length' = 1000000000 is out of range"),
    ("n_layers", 2.5, "'model.n_layers' = 2.5 is not valid"),
    ("n_heads", 3, "must split into 'model.n_heads' = 3 heads"),
])
def test_an_impossible_recorded_shape_is_refused_before_anything_is_allocated(checkpoint, tmp_path, field, value,
                                                                             message):
    state = load_checkpoint(checkpoint)
    state["shape"][field] = value
    save_checkpoint(tmp_path / "shaped.pt", state)
    with pytest.raises(CheckpointError, match=f"records an impossible model shape: .*{message}"):
        load_model(tmp_path / "shaped.pt")


def test_weights_that_do_not_fit_the_recorded_shape_are_refused(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["shape"]["d_ff"] *= 2  # within bounds, but the file holds the weights of the smaller model
    save_checkpoint(tmp_path / "wider.pt", state)
    with pytest.raises(CheckpointError, match=r"holds \d+ weights; the model shape it records has \d+ fp32 weights"):
        load_model(tmp_path / "wider.pt")
    state = load_checkpoint(checkpoint)
    state["model"]["norm.offset"] = state["model"].pop("norm.bias")  # as many weights, under another name
    save_checkpoint(tmp_path / "renamed.pt", state)
    with pytest.raises(CheckpointError, match="does not fit the model shape it records: .*norm.offset"):
        load_model(tmp_path / "renamed.pt")


def test_a_loaded_state_can_be_saved_again_as_it_is(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "again.pt", state)
    assert load_checkpoint(tmp_path / "again.pt")["content_sha256"] == state["content_sha256"]
    model, _ = load_model(tmp_path / "again.pt")
    assert model.shape == ModelShape(**state["shape"])


def test_two_runs_of_one_recipe_export_byte_identical_models(synthetic_tokens, tmp_path):
    """The exported model carries no timing: nothing in it changes between two runs of one recipe."""
    one_epoch = dataclasses.replace(TRAIN, epochs=1)
    for name in ("a", "b"):
        result = run(synthetic_tokens, tmp_path / name, one_epoch)
        export_model(result.best_checkpoint, tmp_path / f"{name}.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert "timings" not in load_checkpoint(tmp_path / "a.pt")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_model_with_non_finite_weights_is_neither_loaded_nor_exported(checkpoint, tmp_path, value):
    """A checkpoint of a diverged run, its hash valid: the model would generate empty text without an error."""
    state = load_checkpoint(checkpoint)
    state["model"]["blocks.0.mlp.up.weight"][1, 2] = value
    poisoned = tmp_path / "poisoned.pt"
    save_checkpoint(poisoned, state)  # a training checkpoint may hold it: resuming stops at its first loss
    with pytest.raises(CheckpointError, match=r"poisoned.pt holds non-finite weights \(blocks.0.mlp.up.weight\)"):
        load_model(poisoned)
    with pytest.raises(CheckpointError, match="holds non-finite weights"):
        export_model(poisoned, tmp_path / "best_model.pt")
    assert not (tmp_path / "best_model.pt").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory, not a file"),
    (lambda p: p.write_text("Chapter 1\nIt was a dark night.\n"), "cannot be read: it is not a file torch.save wrote"),
    (lambda p: p.write_bytes(b""), "cannot be read: it is not a file torch.save wrote"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
])
def test_what_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, make, message):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_path_too_long_for_the_file_system_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"is not usable \(File name too long\)"):
        load_checkpoint(tmp_path / ("a" * 5000 + ".pt"))
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_checkpoint(Path("/dev/null"))
