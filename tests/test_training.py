"""The training loop, checkpoints and resume, on a small synthetic token dataset."""

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from src.config import ModelConfig, TrainConfig
from src.data.dataset import SplitStats, TokenSplit, write_token_dataset
from src.model.checkpoint import CheckpointError, code_digest, load_checkpoint, load_model, save_checkpoint
from src.model.transformer import ModelShape, TinyTransformer
from src.training.schedule import warmup_cosine
from src.training.trainer import (TrainingDiverged, evaluate, make_optimizer, make_train_step, precision_context,
                                  train)

VOCAB = 40
MODEL = ModelConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, dropout=0.1, context_length=16)
TRAIN = TrainConfig(epochs=3, batch_size=16, learning_rate=0.01, max_seq_length=16, seed=3, weight_decay=0.1,
                    warmup_steps=5, min_lr_ratio=0.1, grad_clip=1.0, eval_batch_size=32, checkpoint_every=1,
                    precision="fp32", compile=False, device="cpu", nproc=1,
                    plateau_loss=7.0)


@pytest.fixture
def data(tmp_path):
    """A learnable sequence (a cycle with some noise) as train and validation splits."""
    rng = np.random.default_rng(0)

    def ids(n):
        cycle = np.arange(n) % 23 + 4
        noise = rng.integers(4, VOCAB, n)
        return np.where(rng.random(n) < 0.1, noise, cycle).astype(np.uint16)

    tokens = tmp_path / "tokens"
    train_ids, validation_ids = ids(6000), ids(700)
    write_token_dataset(tokens, {"train": (train_ids, SplitStats(len(train_ids), 3 * len(train_ids))),
                                 "validation": (validation_ids, SplitStats(len(validation_ids), 2100))})
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"stands in for the tokenizer: only its bytes are fingerprinted")
    return tokens, tokenizer


def run(data, checkpoints, train_cfg=TRAIN, **kwargs):
    tokens, tokenizer = data
    return train(MODEL, train_cfg, vocab_size=VOCAB, tokens_dir=tokens, tokenizer_file=tokenizer,
                 checkpoint_dir=checkpoints, **kwargs)


def test_training_learns_and_writes_every_checkpoint(data, tmp_path):
    result = run(data, tmp_path / "ckpt")
    history = result.state.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["validation_loss"] < history[0]["validation_loss"] < np.log(VOCAB)
    assert {p.name for p in (tmp_path / "ckpt").glob("*.pt")} == {
        "best.pt", "last.pt", "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"}
    assert not list((tmp_path / "ckpt").glob(".*part"))
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.state.best_epoch
    assert best["training_state"]["best_validation_loss"] == min(h["validation_loss"] for h in history)


def test_a_run_is_reproducible(data, tmp_path):
    first = run(data, tmp_path / "a").state.history
    second = run(data, tmp_path / "b").state.history
    assert [h["validation_loss"] for h in first] == [h["validation_loss"] for h in second]


def test_resuming_from_any_checkpoint_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    uninterrupted = run(data, tmp_path / "full")
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "epoch_0001.pt").write_bytes((tmp_path / "full" / "epoch_0001.pt").read_bytes())
    resumed = run(data, resumed_dir)
    assert resumed.resumed_from_epoch == 1
    assert resumed.state.history == [
        {**h, "seconds": r["seconds"], "tokens_per_sec": r["tokens_per_sec"]}
        for h, r in zip(uninterrupted.state.history, resumed.state.history)]
    a, b = load_checkpoint(uninterrupted.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_a_checkpoint_of_another_recipe_is_set_aside_not_resumed(data, tmp_path, caplog):
    checkpoints = tmp_path / "ckpt"
    run(data, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    changed = dataclasses.replace(TRAIN, epochs=1, learning_rate=0.02)
    with caplog.at_level(logging.WARNING):
        result = run(data, checkpoints, changed)
    assert result.resumed_from_epoch == 0
    assert "made with different params" in caplog.text and "training starts fresh" in caplog.text
    first = (checkpoints / "set_aside" / "last.pt").read_bytes()  # kept, never deleted
    run(data, checkpoints, dataclasses.replace(changed, learning_rate=0.03))
    assert (checkpoints / "set_aside" / "last.pt").read_bytes() == first  # nor replaced by the next one
    assert load_checkpoint(checkpoints / "set_aside" / "last.1.pt")["epoch"] == 1


def test_bookkeeping_params_do_not_change_the_recipe(data, tmp_path):
    checkpoints = tmp_path / "ckpt"
    run(data, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    result = run(data, checkpoints, dataclasses.replace(TRAIN, epochs=1, checkpoint_every=5, plateau_loss=3.0))
    assert result.resumed_from_epoch == 1 and len(result.state.history) == 1


def test_an_unreadable_checkpoint_is_set_aside(data, tmp_path):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"half a checkpoint")
    result = run(data, checkpoints, dataclasses.replace(TRAIN, epochs=1))
    assert result.resumed_from_epoch == 0
    assert (checkpoints / "set_aside" / "last.pt").read_bytes() == b"half a checkpoint"


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data, tmp_path):
    checkpoints = tmp_path / "ckpt"
    two_epochs = dataclasses.replace(TRAIN, epochs=2)
    run(data, checkpoints, two_epochs)
    for name in ("epoch_0002.pt", "last.pt", "best.pt"):
        (checkpoints / name).unlink()
    # The epoch-1 checkpoint's weights went bad: resuming from it makes the loss NaN on the first step.
    poisoned = load_checkpoint(checkpoints / "epoch_0001.pt")
    poisoned["model"]["embed.weight"][5] = float("nan")
    save_checkpoint(checkpoints / "epoch_0001.pt", {k: v for k, v in poisoned.items() if k != "format"})
    before = (checkpoints / "epoch_0001.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1 .*lower learning_rate"):
        run(data, checkpoints, two_epochs)
    assert (checkpoints / "epoch_0001.pt").read_bytes() == before
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["epoch_0001.pt"]


def test_checkpoints_round_trip_through_the_safe_loader(data, tmp_path):
    result = run(data, tmp_path / "ckpt", dataclasses.replace(TRAIN, epochs=1))
    model, meta = load_model(result.best_checkpoint)
    assert not model.training and meta["epoch"] == 1 and set(meta["fingerprint"]) == {"data", "tokenizer",
                                                                                          "params", "code"}
    tokens = torch.randint(0, VOCAB, (2, 8))
    again, _ = load_model(result.best_checkpoint)
    assert torch.equal(model(tokens), again(tokens))


def test_the_loader_refuses_a_checkpoint_of_another_format(data, tmp_path):
    result = run(data, tmp_path / "ckpt", dataclasses.replace(TRAIN, epochs=1))
    state = load_checkpoint(result.last_checkpoint)
    # Format 1 paired RoPE channels differently: its weights must not load silently.
    torch.save({**state, "format": 1}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt is of format 1; this version reads format 2: train again"):
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


def test_evaluation_scores_every_validation_token_once(data):
    tokens, _ = data
    split = TokenSplit(tokens, "validation")
    targets = sum(t.numel() for _, t in split.evaluation_batches(16, 7))
    assert targets == len(split) - 1
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(MODEL, VOCAB))
    nats, bits_per_byte = evaluate(model, split, 16, 7, "fp32")
    assert evaluate(model, split, 16, 32, "fp32")[0] == pytest.approx(nats, abs=1e-5)  # batching changes nothing
    assert bits_per_byte == pytest.approx(nats * (len(split) - 1) / (np.log(2) * split.stats.bytes))


def test_an_epoch_is_full_batches_of_distinct_windows(tmp_path):
    ids = np.arange(6000, dtype=np.uint16)  # a window's first id is its position
    write_token_dataset(tmp_path, {"train": (ids, SplitStats(len(ids), len(ids)))})
    split = TokenSplit(tmp_path, "train")
    windows = split.windows_per_epoch(16)
    assert windows % 16, "the test needs windows left over"
    left_out = []
    for epoch in (1, 2):
        batches = list(split.epoch_batches(16, 16, torch.Generator().manual_seed(epoch)))
        assert len(batches) == split.batches_per_epoch(16, 16) == windows // 16
        assert all(x.shape == (16, 16) and torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
        first_ids = torch.cat([x[:, 0] for x, _ in batches]).tolist()
        offset = first_ids[0] % 16  # every window of an epoch starts at offset + 16 * index
        used = {(first - offset) // 16 for first in first_ids}
        assert len(used) == len(first_ids) == windows - windows % 16
        left_out.append(set(range(windows)) - used)
    assert left_out[0] != left_out[1]  # another epoch leaves out other windows


@pytest.mark.parametrize("precision, upcast", [("bf16", False), ("fp32", True)])
def test_bf16_precision_keeps_the_math_attention_kernel_in_bf16(precision, upcast):
    """SDPA's math kernel casts bf16 inputs to fp32 unless bf16 precision allows it not to; the switch is
    restored afterwards."""
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    q = torch.randn(2, 2, 8, 4, dtype=torch.bfloat16)
    with precision_context(precision), sdpa_kernel(SDPBackend.MATH), profile(record_shapes=True) as prof:
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[0] == [2, 2, 8, 4]]
    assert bool(casts) == upcast
    assert out.dtype == torch.bfloat16
    assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() == before


def attention_kernels(run_step) -> set[str]:
    """The SDPA kernels, by their ATen names, that ``run_step()`` calls."""
    with profile() as prof:
        run_step()
    return {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}


def test_the_training_step_chooses_the_math_attention_kernel_and_the_model_keeps_pytorchs_choice():
    """On a CPU, the training step runs SDPA's math kernel; the model on its own (evaluation, generation,
    the benchmark's plain reference) runs the kernel PyTorch picks: without dropout, its CPU flash kernel."""
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(dataclasses.replace(MODEL, dropout=0.0), VOCAB)).train()
    optimizer = make_optimizer(model, TRAIN)
    step = make_train_step(model, optimizer, warmup_cosine(optimizer, 5, 100, 0.1), TRAIN)
    inputs = torch.randint(0, VOCAB, (4, 16))
    assert attention_kernels(lambda: step(inputs, inputs)) == {"aten::_scaled_dot_product_attention_math"}
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert attention_kernels(lambda: model.loss(inputs, inputs).backward()) == {flash, flash + "_backward"}
