"""The training loop and exact resume, on a small synthetic token dataset (tests/conftest.py)."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.profiler import profile

from src.data.dataset import BookTokens, SplitStats, TokenSplit
from src.data.token_files import write_token_dataset
from src.model.checkpoint import load_checkpoint, save_checkpoint
from src.model.transformer import ModelShape, TinyTransformer
from src.training.optimizers import make_optimizer
from src.training.schedule import make_scheduler
from src.training.step import make_train_step
from src.training.checkpointing import RunCheckpoints
from src.training.trainer import (StepParts, TrainingDiverged, evaluate, history_with_seconds, measure_compile,
                                  train)
from tests.conftest import MODEL, TRAIN, VOCAB, run


def test_training_learns_and_writes_every_checkpoint(synthetic_tokens, tmp_path):
    result = run(synthetic_tokens, tmp_path / "ckpt")
    history = result.state.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["validation_loss"] < history[0]["validation_loss"] < np.log(VOCAB)
    assert {p.name for p in (tmp_path / "ckpt").glob("*.pt")} == {
        "best.pt", "last.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt"}
    assert not list((tmp_path / "ckpt").glob(".*part"))
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.state.best_epoch
    assert best["training_state"]["best_validation_loss"] == min(h["validation_loss"] for h in history)


def test_a_run_is_reproducible(synthetic_tokens, tmp_path):
    first = run(synthetic_tokens, tmp_path / "a").state.history
    second = run(synthetic_tokens, tmp_path / "b").state.history
    assert [h["validation_loss"] for h in first] == [h["validation_loss"] for h in second]


RECIPES = {"adamw, cosine": TRAIN, "muon, wsd, every 100 steps": dataclasses.replace(
    TRAIN, optimizer="muon", schedule="wsd", eval_every_steps=100)}


@pytest.mark.parametrize("recipe", RECIPES)
def test_resuming_from_any_checkpoint_ends_where_an_uninterrupted_run_ends(synthetic_tokens, tmp_path, recipe):
    cfg = RECIPES[recipe]
    uninterrupted = run(synthetic_tokens, tmp_path / "full", cfg)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint_epoch_1.pt").write_bytes((tmp_path / "full" / "checkpoint_epoch_1.pt").read_bytes())
    resumed = run(synthetic_tokens, resumed_dir, cfg)
    assert resumed.resumed_from_epoch == 1
    assert resumed.state == uninterrupted.state  # every computed figure; timings are kept apart
    assert len(resumed.timings.rows) == len(uninterrupted.timings.rows) == len(uninterrupted.state.history)
    assert len(resumed.timings.log_seconds) == len(uninterrupted.state.log)
    a, b = load_checkpoint(uninterrupted.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synthetic_tokens, tmp_path):
    checkpoints = tmp_path / "ckpt"
    two_epochs = dataclasses.replace(TRAIN, epochs=2)
    run(synthetic_tokens, checkpoints, two_epochs)
    for name in ("checkpoint_epoch_2.pt", "last.pt", "best.pt"):
        (checkpoints / name).unlink()
    # The epoch-1 checkpoint's weights went bad: resuming from it makes the loss NaN on the first step.
    poisoned = load_checkpoint(checkpoints / "checkpoint_epoch_1.pt")
    poisoned["model"]["embed.weight"][5] = float("nan")
    save_checkpoint(checkpoints / "checkpoint_epoch_1.pt", poisoned)
    before = (checkpoints / "checkpoint_epoch_1.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1 .*lower learning_rate"):
        run(synthetic_tokens, checkpoints, two_epochs)
    assert (checkpoints / "checkpoint_epoch_1.pt").read_bytes() == before
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["checkpoint_epoch_1.pt"]


def test_evaluation_scores_every_validation_token_once(synthetic_tokens):
    tokens, _ = synthetic_tokens
    split = TokenSplit(tokens, "validation")
    targets = sum(t.numel() for _, t, _ in split.evaluation_batches(16, 7))
    assert targets == len(split) - 1
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(MODEL, VOCAB))
    result = evaluate(model, split, 16, 7, "fp32")
    assert evaluate(model, split, 16, 32, "fp32").loss == pytest.approx(result.loss, abs=1e-5)  # batching changes nothing
    assert result.bits_per_byte == pytest.approx(result.loss * (len(split) - 1) / (np.log(2) * split.stats.bytes))


def test_bits_per_byte_per_language_scores_each_book_with_its_own_tokens_and_bytes(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(4, VOCAB, 700).astype(np.uint16)
    books = (BookTokens("a", "en", 300, 900), BookTokens("b", "fr", 250, 1000), BookTokens("c", "en", 150, 500))
    write_token_dataset(tmp_path, {"validation": (ids, SplitStats(700, 2400, books))})
    split = TokenSplit(tmp_path, "validation")
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(MODEL, VOCAB))
    result = evaluate(model, split, 16, 8, "fp32")
    model.eval()  # as evaluate scores (MODEL has dropout)
    losses = torch.cat([model.token_losses(x, y).flatten() for x, y, _ in split.evaluation_batches(16, 8)])
    positions = torch.arange(1, 700)  # every token but the first is a target once, in order
    in_book = {"en": (positions < 300) | (positions >= 550), "fr": (positions >= 300) & (positions < 550)}
    expected = {language: losses[mask].double().sum().item() / (np.log(2) * n_bytes)
                for language, mask, n_bytes in (("en", in_book["en"], 1400), ("fr", in_book["fr"], 1000))}
    assert result.bits_per_byte_by_language == pytest.approx(expected, rel=1e-6)
    assert result.bits_per_byte == pytest.approx(losses.double().sum().item() / (np.log(2) * 2400), rel=1e-6)


def test_a_token_budget_scores_the_same_sample_of_windows_in_every_run_whatever_its_seed(tmp_path):
    """Its cost does not grow with the split; a book's bytes are its share of the targets scored."""
    rng = np.random.default_rng(2)
    ids = rng.integers(4, VOCAB, 5000).astype(np.uint16)
    books = (BookTokens("a", "en", 3000, 9000), BookTokens("b", "fr", 2000, 8000))
    write_token_dataset(tmp_path, {"validation": (ids, SplitStats(5000, 17000, books))})
    split = TokenSplit(tmp_path, "validation")
    windows = split.evaluation_windows(16, 800)
    assert len(windows) == 50 and list(windows) == sorted(windows) and np.all(windows % 16 == 0)
    torch.manual_seed(123)  # a run's seed does not choose the sample
    assert np.array_equal(split.evaluation_windows(16, 800), windows)
    assert sum(t.numel() for _, t, _ in split.evaluation_batches(16, 8, 800)) == 800
    assert np.array_equal(split.evaluation_windows(16, 10**6), split.evaluation_windows(16))  # the split fits: all
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(MODEL, VOCAB))
    result = evaluate(model, split, 16, 8, "fp32", max_tokens=800)
    model.eval()
    scored = [(model.token_losses(x, y).flatten(), b.flatten()) for x, y, b in split.evaluation_batches(16, 8, 800)]
    losses, book_of = torch.cat([loss for loss, _ in scored]), torch.cat([b for _, b in scored])
    share = {"en": (book_of == 0).sum().item() / 2999, "fr": (book_of == 1).sum().item() / 2000}
    assert result.loss == pytest.approx(losses.double().mean().item(), rel=1e-6)
    assert result.bits_per_byte_by_language["fr"] == pytest.approx(
        losses[book_of == 1].double().sum().item() / (np.log(2) * 8000 * share["fr"]), rel=1e-6)


def attention_kernels(run_step) -> set[str]:
    """The SDPA kernels, by their ATen names, that ``run_step()`` calls."""
    with profile() as prof:
        run_step()
    return {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}


@pytest.mark.parametrize("kernel", ["math", "flash"])
def test_the_training_step_runs_its_chosen_attention_kernel_and_the_model_keeps_pytorchs_choice(kernel):
    """The training step runs the kernel train.attention resolved to; the model on its own (evaluation,
    generation, the benchmark's plain reference) runs the kernel PyTorch picks: without dropout, its CPU
    flash kernel."""
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape.from_config(dataclasses.replace(MODEL, dropout=0.0), VOCAB)).train()
    cfg = dataclasses.replace(TRAIN, attention=kernel)
    optimizer = make_optimizer(model, cfg)
    step = make_train_step(model, optimizer, make_scheduler(optimizer, cfg, 100), cfg)
    inputs = torch.randint(0, VOCAB, (4, 16))
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    ran = {"math": {"aten::_scaled_dot_product_attention_math"}, "flash": {flash, flash + "_backward"}}
    assert attention_kernels(lambda: step(inputs, inputs)) == ran[kernel]
    assert attention_kernels(lambda: model.loss(inputs, inputs).backward()) == {flash, flash + "_backward"}


STEPS_PER_EPOCH = (6000 - 1) // 16 // TRAIN.batch_size  # 23, on the synthetic tokens


def test_evaluation_every_n_steps_adds_rows_and_hands_the_state_over_each_time(synthetic_tokens, tmp_path):
    handed = []
    result = run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, eval_every_steps=10),
                 on_evaluation=lambda state, timings: handed.append(history_with_seconds(state.history, timings.rows)))
    history = result.state.history
    expected_steps = sorted({*range(10, 3 * STEPS_PER_EPOCH + 1, 10), *(e * STEPS_PER_EPOCH for e in (1, 2, 3))})
    assert [row["step"] for row in history] == expected_steps
    assert [row["epoch"] for row in history if row["step"] % STEPS_PER_EPOCH == 0] == [1, 2, 3]
    assert all(row["tokens"] == row["step"] * TRAIN.batch_size * 16 for row in history)
    assert len(handed) == len(history) and [len(h) for h in handed] == list(range(1, len(history) + 1))
    seconds = [row["seconds"] for row in handed[-1]]
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:]))
    best = min(history, key=lambda row: row["validation_loss"])
    assert (result.state.best_step, result.state.best_epoch) == (best["step"], best["epoch"])
    assert load_checkpoint(result.best_checkpoint)["training_state"]["step"] == best["step"]
    # Evaluating and checkpointing are timed apart from training.
    assert result.timings.evaluation_seconds > 0 and result.timings.checkpoint_seconds > 0


def test_the_training_loss_is_recorded_every_few_steps(synthetic_tokens, tmp_path):
    result = run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, log_every_steps=4))
    log = result.state.log
    assert [row["step"] for row in log] == [*range(4, 3 * STEPS_PER_EPOCH + 1, 4), 3 * STEPS_PER_EPOCH]
    assert all(np.isfinite(row["train_loss"]) and row["learning_rate"] > 0 for row in log)
    assert len(result.timings.log_seconds) == len(log) and sorted(result.timings.log_seconds) == result.timings.log_seconds


def test_a_step_budget_ends_the_run_within_an_epoch_and_the_schedule_spans_it(synthetic_tokens, tmp_path):
    budget = STEPS_PER_EPOCH + 9
    result = run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, max_steps=budget, epochs=1))
    state = result.state
    assert (state.step, state.epoch) == (budget, 1)
    assert [row["step"] for row in state.history] == [STEPS_PER_EPOCH, budget]
    assert state.history[-1]["epoch"] == pytest.approx(budget / STEPS_PER_EPOCH, abs=1e-6)
    assert state.history[-1]["learning_rate"] == pytest.approx(TRAIN.learning_rate * TRAIN.min_lr_ratio)  # decayed
    assert load_checkpoint(result.last_checkpoint)["training_state"]["step"] == budget


class Crash(Exception):
    """Stands in for a kill: raised by the evaluation hook, after the checkpoints of the steps before."""


@pytest.mark.parametrize("crash_at", [15, 30, 45])  # within epoch 1, epoch 2 (a step after its start), epoch 2
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_run_killed_within_an_epoch_resumes_to_the_uninterrupted_runs_weights(synthetic_tokens, tmp_path, crash_at,
                                                                                 dropout):
    """Checkpoints every 5 steps; the run dies at an evaluation, so its resume point is 5 steps back, mid-epoch.
    Resumed, it ends with the uninterrupted run's state (every row) and weights, bit for bit."""
    cfg = dataclasses.replace(TRAIN, eval_every_steps=5, checkpoint_every_steps=5, log_every_steps=3)
    model = dataclasses.replace(MODEL, dropout=dropout)
    uninterrupted = train(model, cfg, vocab_size=VOCAB, tokens_dir=synthetic_tokens[0],
                          tokenizer_file=synthetic_tokens[1], checkpoint_dir=tmp_path / "full")

    def crash(state, timings):
        if state.step == crash_at:
            raise Crash

    with pytest.raises(Crash):
        train(model, cfg, vocab_size=VOCAB, tokens_dir=synthetic_tokens[0], tokenizer_file=synthetic_tokens[1],
              checkpoint_dir=tmp_path / "killed", on_evaluation=crash)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["training_state"]["step"] == crash_at - 5
    resumed = train(model, cfg, vocab_size=VOCAB, tokens_dir=synthetic_tokens[0], tokenizer_file=synthetic_tokens[1],
                    checkpoint_dir=tmp_path / "killed")
    assert resumed.resumed_from_step == crash_at - 5 and resumed.state == uninterrupted.state
    a, b = load_checkpoint(uninterrupted.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(tensor, b["model"][name]) for name, tensor in a["model"].items())


def test_checkpoints_by_the_minute_are_written_within_an_epoch(synthetic_tokens, tmp_path, monkeypatch):
    """A clock that jumps a minute per step: with checkpoint_minutes 1, every step writes the resume point."""
    written = []
    real_save = RunCheckpoints.save
    monkeypatch.setattr(RunCheckpoints, "save", lambda self, name, step, state: (written.append((name, step)),
                                                                                  real_save(self, name, step, state)))
    ticks = iter(range(0, 10**6, 60))
    monkeypatch.setattr("src.training.trainer.time.monotonic", lambda: next(ticks))
    run(synthetic_tokens, tmp_path / "ckpt", dataclasses.replace(TRAIN, epochs=1, checkpoint_minutes=1))
    assert [step for name, step in written if name == "last.pt"] == list(range(1, STEPS_PER_EPOCH + 1))


def test_measure_compile_times_the_compilation_and_both_steps_and_puts_the_run_back():
    cfg = dataclasses.replace(TRAIN, precision="fp32", attention="math")
    shape = ModelShape.from_config(dataclasses.replace(MODEL, dropout=0.0), VOCAB)
    parts = StepParts.fresh(shape, cfg, 100, torch.device("cpu"))
    before = copy.deepcopy((parts.model.state_dict(), parts.scheduler.state_dict()))
    figures, compiled_step = measure_compile(cfg, parts, 4)
    assert set(figures) == {"compile_s", "eager_ms", "compiled_ms"}
    assert figures["compile_s"] * 1e3 > figures["compiled_ms"] > 0 and figures["eager_ms"] > 0
    weights, schedule = before
    assert all(torch.equal(weights[name], value) for name, value in parts.model.state_dict().items())
    assert parts.scheduler.state_dict() == schedule and not parts.optimizer.state
    assert all(p.grad is None for p in parts.model.parameters())
    assert math.isfinite(compiled_step(*torch.randint(0, VOCAB, (2, 4, cfg.max_seq_length)).unbind(0)))


def test_a_run_that_measures_compile_goes_on_with_that_compiled_step_and_ends_as_with_a_cached_verdict(
        synthetic_tokens, tmp_path, monkeypatch):
    """Deciding to compile compiles the run's own step, once; the measured steps (with dropout) leave no trace."""
    compiles = []
    real_make_train_step = make_train_step
    monkeypatch.setattr("src.training.trainer.make_train_step",
                        lambda *args: compiles.append(args[3].compile) or real_make_train_step(*args))
    verdicts = []

    def resolve_compile(setting, total_steps, key, measure):
        verdicts.append(verdicts[0] if verdicts else measure())
        return True, "compiled"

    monkeypatch.setattr("src.training.trainer.resolve_compile", resolve_compile)
    cfg = dataclasses.replace(TRAIN, compile="auto", epochs=1)
    measured = run(synthetic_tokens, tmp_path / "measured", cfg)
    assert compiles == [False, True]  # the measurement's two steps; the run goes on with its compiled one
    cached = run(synthetic_tokens, tmp_path / "cached", cfg)
    assert compiles == [False, True, True]
    assert measured.state.history == cached.state.history and measured.state.log == cached.state.log
    assert measured.environment["compile"] is cached.environment["compile"] is True
