"""The training loop: optimizer steps, evaluations every N steps and at each epoch's end, checkpoints after each.

A run repeats bit for bit on one machine (same threads and workers): the step and the data order
(``src.training.step``) are deterministic, and checkpoints, taken at epoch boundaries, carry the model,
optimizer, scheduler and RNG state, so a run resumed from any checkpoint ends exactly where an uninterrupted
run ends.

Under torchrun every worker draws the same global batches and trains on its own slice of each; DDP
averages the gradients, so the global batch, and the result, are those of a single process. Rank 0
alone writes checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from src.config import ModelConfig, TrainConfig
from src.data.dataset import TokenDataError, TokenSplit
from src.model.transformer import ModelShape, TinyTransformer
from src.training.checkpointing import BEST, LAST, RunCheckpoints, fingerprint, snapshot
from src.training.distributed import Workers, single_process
from src.training.optimizers import make_optimizer
from src.training.speed_choices import (best_of_rounds, machine_key, resolve_attention, resolve_compile,
                                        resolve_precision)
from src.training.step import deterministic_algorithms, epoch_generator, make_train_step, precision_context
from src.training.schedule import make_scheduler

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainingState:
    """What training computed so far: the same in every run of a recipe on one machine (timings are apart)."""
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per evaluation (``evaluation_row``)
    best_epoch: int = 0  # the best epoch-end evaluation: the model best.pt holds
    best_validation_loss: float = math.inf


@dataclass(frozen=True)
class TrainingResult:
    state: TrainingState
    last_checkpoint: Path
    best_checkpoint: Path
    parameters: int
    resumed_from_epoch: int
    environment: dict[str, object]  # what the numbers depend on beyond the recipe (Workers.environment)
    timings: list[dict[str, float]]  # per history row: the training seconds (evaluation excluded) and tokens/s since the row before


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy, nats per token
    bits_per_byte: float
    bits_per_byte_by_language: dict[str, float]  # each language's held-out text alone


@torch.inference_mode()
def evaluate(model: TinyTransformer, split: TokenSplit, length: int, batch_size: int,
             precision: str, workers: Workers = single_process()) -> Evaluation:
    """The loss over the whole split in fixed windows, and its bits per byte overall and per language.

    Each target's loss is added to its book's sum. Workers score every ``world_size``-th batch each and add
    up their sums.
    """
    was_training = model.training
    model.eval()
    books = split.stats.books
    nats = torch.zeros(max(len(books), 1), dtype=torch.float64)
    count = 0
    for index, (inputs, targets, book_of) in enumerate(split.evaluation_batches(length, batch_size)):
        if index % workers.world_size != workers.rank:
            continue
        with precision_context(precision, workers.device):
            losses = model.token_losses(inputs.to(workers.device), targets.to(workers.device))
        nats += torch.bincount(book_of.flatten(), weights=losses.flatten().double().cpu(), minlength=len(nats))
        count += targets.numel()
    model.train(was_training)
    *nats_per_book, count = workers.sum([*nats.tolist(), count])
    total = sum(nats_per_book)
    by_language: dict[str, list[float]] = {}
    for book, book_nats in zip(books, nats_per_book):
        language = by_language.setdefault(book.language, [0.0, 0])
        language[0] += book_nats
        language[1] += book.bytes
    return Evaluation(total / count, total / (math.log(2) * split.stats.bytes),
                      {language: nats_sum / (math.log(2) * n_bytes)
                       for language, (nats_sum, n_bytes) in sorted(by_language.items())})


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, *, vocab_size: int, tokens_dir: Path,
          tokenizer_file: Path, checkpoint_dir: Path, periodic_dir: Path | None = None, fresh: bool = False,
          workers: Workers = single_process(),
          on_evaluation: Callable[[list[dict[str, Any]]], None] | None = None) -> TrainingResult:
    """Train (or resume) until ``train_cfg.epochs`` epochs are complete; return where things are.

    The run's checkpoints go to ``checkpoint_dir``, its periodic ones to ``periodic_dir`` (the same folder when
    None).

    ``on_evaluation`` gets the history (with each row's cumulative training seconds) after every evaluation,
    on the main worker.
    """
    train_split, validation_split = TokenSplit(tokens_dir, "train"), TokenSplit(tokens_dir, "validation")
    steps_per_epoch = batches_per_epoch(train_split, validation_split, train_cfg, workers)
    shape = ModelShape.from_config(model_cfg, vocab_size)
    # The fingerprint keys on the precision and kernel that run.
    train_cfg, choices = speed_choices(train_cfg, shape, workers, steps_per_epoch * train_cfg.epochs)

    torch.manual_seed(train_cfg.seed)
    model = TinyTransformer(shape).to(workers.device)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch * train_cfg.epochs)
    stamp = fingerprint(model_cfg, train_cfg, tokens_dir, tokenizer_file)
    checkpoints = RunCheckpoints.open(checkpoint_dir, stamp, train_cfg.checkpoint_every, workers, fresh, periodic_dir)
    state, timings = TrainingState(), []
    progress = checkpoints.restore(model, optimizer, scheduler)
    if progress is not None:
        state, timings = TrainingState(**progress["training_state"]), progress["timings"]
        log.info("resuming after epoch %d of %d (step %d)", state.epoch, train_cfg.epochs, state.step)
    resumed_from = state.epoch

    def checkpoint() -> dict[str, Any]:
        return snapshot(state.epoch, model, optimizer, scheduler, {"training_state": asdict(state), "timings": timings},
                        stamp, {"model": asdict(model_cfg), "train": asdict(train_cfg)})

    def evaluated() -> None:
        if on_evaluation is not None and workers.is_main:
            on_evaluation(history_with_seconds(state.history, timings))

    model.train()
    with deterministic_algorithms():
        step = make_train_step(model, optimizer, scheduler, train_cfg, workers)
        while state.epoch < train_cfg.epochs:
            improved = run_epoch(state, timings, step, train_split, validation_split, model, scheduler, train_cfg,
                                 workers, evaluated)
            if workers.is_main:
                checkpoints.after_epoch(state.epoch, improved, checkpoint)

    workers.check_identical(model)
    if workers.is_main:
        checkpoints.finish(state.epoch, state.best_epoch, checkpoint)
    workers.barrier()
    environment = {**workers.environment(), "precision": train_cfg.precision, "attention": train_cfg.attention,
                   "compile": train_cfg.compile, **choices}
    return TrainingResult(state, checkpoints.path(LAST), checkpoints.path(BEST), model.num_parameters(), resumed_from,
                          environment, timings)


def batches_per_epoch(train_split: TokenSplit, validation_split: TokenSplit, cfg: TrainConfig,
                      workers: Workers) -> int:
    """Optimizer steps per epoch; refuses data that cannot fill one batch, or a batch the workers cannot share."""
    steps = train_split.batches_per_epoch(cfg.max_seq_length, cfg.batch_size)
    if steps < 1 or len(validation_split) < 2:
        raise TokenDataError(
            f"the token data ({len(train_split)} training, {len(validation_split)} validation tokens) cannot fill "
            f"one batch of batch_size={cfg.batch_size} windows of max_seq_length={cfg.max_seq_length} tokens: "
            f"lower them, or add text to the corpus")
    if cfg.batch_size % workers.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must split evenly over {workers.world_size} workers")
    return steps


def speed_choices(cfg: TrainConfig, shape: ModelShape, workers: Workers,
                  total_steps: int) -> tuple[TrainConfig, dict[str, str]]:
    """``cfg`` with the precision, attention kernel and compile setting this run of ``total_steps`` uses, and why
    each (main worker only).

    The main worker decides, measuring once per machine for auto, and every worker follows its choice.
    """
    batch, length = cfg.batch_size // workers.world_size, cfg.max_seq_length
    precision, attention, compiled, why = "", "", False, {}
    if workers.is_main:
        precision, why["precision_choice"] = resolve_precision(cfg.precision, workers.device, shape, batch, length)
        attention, why["attention_choice"] = resolve_attention(cfg.attention, precision, workers.device, shape,
                                                               batch, length)
        chosen = replace(cfg, precision=precision, attention=attention)
        compiled, why["compile_choice"] = resolve_compile(
            cfg.compile, total_steps, machine_key(f"{precision} {attention}", shape, batch, length),
            lambda: measure_compile(chosen, shape, batch, workers.device))
    bf16, flash, math_kernel, compiled = workers.sum([float(precision == "bf16"), float(attention == "flash"),
                                                     float(attention == "math"), float(compiled)])
    attention = "flash" if flash else "math" if math_kernel else "default"
    return replace(cfg, precision="bf16" if bf16 else "fp32", attention=attention, compile=compiled > 0), why


COMPILE_STEPS = 2  # steps per round of measure_compile, each variant in each of speed_choices.ROUNDS rounds


def measure_compile(cfg: TrainConfig, shape: ModelShape, batch: int, device: torch.device) -> dict[str, float]:
    """The first compiled step's seconds (its compilation) and the step's ms eager and compiled (the best of
    alternating rounds), on fixed random tokens at a worker's batch, in models that are then thrown away."""
    tokens = torch.randint(0, shape.vocab_size, (batch, cfg.max_seq_length + 1),
                           generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    workers = Workers(rank=0, world_size=1, device=device)
    steps = {}
    with deterministic_algorithms():
        for compiled in (False, True):
            model = TinyTransformer(shape).to(device).train()
            optimizer = make_optimizer(model, cfg)
            steps[compiled] = make_train_step(model, optimizer, make_scheduler(optimizer, cfg, 1_000_000),
                                              replace(cfg, compile=compiled), workers)
        steps[False](inputs, targets)
        started = time.perf_counter()
        steps[True](inputs, targets)
        compile_s = time.perf_counter() - started

        def timed(step: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                for _ in range(COMPILE_STEPS):
                    step(inputs, targets)
                return (time.perf_counter() - started) / COMPILE_STEPS
            return run

        seconds = best_of_rounds({"eager": timed(steps[False]), "compiled": timed(steps[True])})
    return {"compile_s": compile_s, "eager_ms": seconds["eager"] * 1e3, "compiled_ms": seconds["compiled"] * 1e3}


def history_with_seconds(history: list[dict[str, Any]], timings: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Each history row with the training seconds (evaluation excluded) from the start to it."""
    rows, seconds = [], 0.0
    for row, timing in zip(history, timings):
        seconds += timing["seconds"]
        rows.append({**row, "seconds": seconds})
    return rows


def run_epoch(state: TrainingState, timings: list[dict[str, float]], step: Callable[[torch.Tensor, torch.Tensor], float],
              train_split: TokenSplit, validation_split: TokenSplit, model: TinyTransformer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig, workers: Workers,
              evaluated: Callable[[], None]) -> bool:
    """Train one epoch, evaluating every ``cfg.eval_every_steps`` steps and at its end; each evaluation is a
    row of ``state.history`` and of ``timings``. Returns whether the epoch-end validation loss improved."""
    epoch, length = state.epoch + 1, cfg.max_seq_length
    steps_per_epoch = train_split.batches_per_epoch(length, cfg.batch_size)
    generator = epoch_generator(cfg.seed, epoch)
    loss_sum, tokens_seen, seconds = 0.0, 0, 0.0  # since the last evaluation
    epoch_seconds, epoch_tokens, epoch_loss_sum = 0.0, 0, 0.0
    bar = tqdm(train_split.epoch_batches(length, cfg.batch_size, generator), total=steps_per_epoch,
               desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=None if workers.is_main else True, leave=False)
    started = time.perf_counter()
    for batch, (inputs, targets) in enumerate(bar, start=1):
        loss_value = step(inputs, targets)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss became {loss_value} at epoch {epoch}, step {batch} of {steps_per_epoch} (global step "
                f"{state.step + 1}); try a lower learning_rate than {cfg.learning_rate:g} "
                f"(e.g. dvc exp run -S learning_rate={cfg.learning_rate / 3:.2g}). The last good "
                f"checkpoint, after epoch {state.epoch}, is kept.")
        state.step += 1
        loss_sum += loss_value * targets.numel()
        tokens_seen += targets.numel()
        if batch % 10 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        at_end = batch == steps_per_epoch
        if at_end or (cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0):
            seconds += time.perf_counter() - started
            if at_end:
                state.epoch = epoch
            row = evaluation_row(state, epoch - 1 + batch / steps_per_epoch, loss_sum / tokens_seen,
                                 evaluate(model, validation_split, length, cfg.eval_batch_size, cfg.precision, workers),
                                 scheduler, cfg)
            state.history.append(row)
            timings.append({"seconds": seconds, "tokens_per_sec": tokens_seen / seconds})
            evaluated()
            epoch_seconds, epoch_tokens = epoch_seconds + seconds, epoch_tokens + tokens_seen
            epoch_loss_sum += loss_sum
            loss_sum, tokens_seen, seconds = 0.0, 0, 0.0
            started = time.perf_counter()
    bar.close()
    last = state.history[-1]
    validation_loss = last["validation_loss"]
    log.info("epoch %d/%d: train loss %.4f, validation loss %.4f (%.3f bits/byte), %.0f tokens/s, %.1fs of training",
             epoch, cfg.epochs, epoch_loss_sum / epoch_tokens, validation_loss, last["validation_bits_per_byte"],
             epoch_tokens / epoch_seconds, epoch_seconds)
    if epoch >= 2 and validation_loss > cfg.plateau_loss:
        log.warning("validation loss %.2f is still above %.1f after %d epochs: the model is barely learning. "
                    "Try a different learning_rate (now %g), more epochs, or check the corpus and tokenizer "
                    "metrics (README: Troubleshooting).", validation_loss, cfg.plateau_loss, epoch,
                    cfg.learning_rate)
    if validation_loss >= state.best_validation_loss:
        return False
    state.best_epoch, state.best_validation_loss = epoch, validation_loss
    return True


def evaluation_row(state: TrainingState, epochs: float, train_loss: float, evaluation: Evaluation,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig) -> dict[str, Any]:
    """A history row: where training is (step, epochs, tokens seen) and what it scores there."""
    return {"step": state.step, "epoch": round(epochs, 6), "tokens": state.step * cfg.batch_size * cfg.max_seq_length,
            "train_loss": train_loss, "validation_loss": evaluation.loss,
            "validation_bits_per_byte": evaluation.bits_per_byte,
            "validation_bits_per_byte_by_language": evaluation.bits_per_byte_by_language,
            "learning_rate": scheduler.get_last_lr()[0]}
