"""The training loop: optimizer steps to a budget, evaluations, training-loss rows, checkpoints.

A run trains ``epochs`` passes over the training text, or ``train.max_steps`` steps (then it may end within an
epoch). It evaluates every ``train.eval_every_steps`` steps, at each epoch's end and at its end, on the same
windows every time (``train.eval_tokens``); it records the training loss every ``train.log_every_steps`` steps.

A run repeats bit for bit on one machine (same threads and workers): the step and the data order
(``src.training.step``) are deterministic, and a checkpoint carries the model, optimizer, scheduler and RNG state
and where in its epoch the run stood, so a run resumed from any checkpoint, at an epoch's end or within one,
ends exactly where an uninterrupted run ends.

Under torchrun every worker draws the same global batches and trains on its own slice of each; DDP
averages the gradients, so the global batch, and the result, are those of a single process. Rank 0
alone reads and writes checkpoints; it hands the resume point to the others.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from src.config import ModelConfig, TrainConfig
from src.data.dataset import TokenDataError, TokenSplit
from src.model.transformer import ModelShape, TinyTransformer
from src.training.checkpointing import (BEST, LAST, RunCheckpoints, earlier_params_digests, epoch_name, fingerprint,
                                        snapshot)
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
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per evaluation (``evaluation_row``)
    log: list[dict[str, Any]] = field(default_factory=list)  # a training-loss row every train.log_every_steps
    best_step: int = 0  # the evaluation with the lowest validation loss: the model best.pt holds
    best_epoch: float = 0.0  # ... and where it stood, in epochs
    best_validation_loss: float = math.inf
    # [loss summed over targets, targets] since the last evaluation row, and since the last log row.
    since_evaluation: list[float] = field(default_factory=lambda: [0.0, 0])
    since_log: list[float] = field(default_factory=lambda: [0.0, 0])

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> TrainingState:
        """The state a checkpoint saved; one of a version that checkpointed at epoch ends alone (no log rows, the
        best as an epoch) is the state at its epoch's end."""
        if "best_step" in saved:
            return cls(**saved)
        best = next((row for row in saved["history"] if row["epoch"] == saved["best_epoch"]), {"step": 0})
        return cls(step=saved["step"], epoch=saved["epoch"], history=saved["history"], best_step=best["step"],
                   best_epoch=float(saved["best_epoch"]), best_validation_loss=saved["best_validation_loss"])


@dataclass
class Timings:
    """How long training took (evaluation excluded): kept apart from the state, which repeats bit for bit."""
    rows: list[dict[str, float]] = field(default_factory=list)  # per history row: seconds and tokens/s since the row before
    log_seconds: list[float] = field(default_factory=list)  # per log row: training seconds from the start
    evaluation_seconds: float = 0.0  # spent in evaluations, from the start
    checkpoint_seconds: float = 0.0  # spent writing checkpoints, from the start

    @property
    def seconds(self) -> float:
        """Training seconds up to the last history row."""
        return sum(row["seconds"] for row in self.rows)

    @classmethod
    def restored(cls, saved: dict[str, Any] | list[dict[str, float]]) -> Timings:
        """A checkpoint's timings (a version that checkpointed at epoch ends alone saved the history rows' list)."""
        return cls(**saved) if isinstance(saved, dict) else cls(rows=saved)


@dataclass(frozen=True)
class TrainingResult:
    state: TrainingState
    last_checkpoint: Path
    best_checkpoint: Path
    parameters: int
    resumed_from_step: int
    resumed_from_epoch: int  # epochs complete at the resume point
    steps_per_epoch: int
    environment: dict[str, object]  # what the numbers depend on beyond the recipe (Workers.environment)
    timings: Timings


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy, nats per token
    bits_per_byte: float
    bits_per_byte_by_language: dict[str, float]  # each language's held-out text alone


@torch.inference_mode()
def evaluate(model: TinyTransformer, split: TokenSplit, length: int, batch_size: int,
             precision: str, workers: Workers = single_process(), max_tokens: int = 0) -> Evaluation:
    """The loss over the split's evaluation windows (all of it, or a fixed sample of ``max_tokens`` tokens), and
    its bits per byte overall and per language.

    Each target's loss is added to its book's sum. A book's bytes are its text's, times the share of its targets
    scored (all of them: exactly its bytes). Workers score every ``world_size``-th batch each and add up their sums.
    """
    was_training = model.training
    model.eval()
    books = split.stats.books
    nats = torch.zeros(max(len(books), 1), dtype=torch.float64)
    scored = torch.zeros(len(nats), dtype=torch.float64)
    for index, (inputs, targets, book_of) in enumerate(split.evaluation_batches(length, batch_size, max_tokens)):
        if index % workers.world_size != workers.rank:
            continue
        with precision_context(precision, workers.device):
            losses = model.token_losses(inputs.to(workers.device), targets.to(workers.device))
        nats += torch.bincount(book_of.flatten(), weights=losses.flatten().double().cpu(), minlength=len(nats))
        scored += torch.bincount(book_of.flatten(), minlength=len(nats)).double()
    model.train(was_training)
    sums = workers.sum([*nats.tolist(), *scored.tolist()])
    nats_per_book, scored_per_book = sums[:len(nats)], sums[len(nats):]
    total = sum(nats_per_book)
    book_bytes = [book.bytes for book in books] or [split.stats.bytes]
    shares = [n / whole for n, whole in zip(scored_per_book, split.targets_per_book())]
    scored_bytes = [size * share for size, share in zip(book_bytes, shares)]
    by_language: dict[str, list[float]] = {}
    for book, book_nats, size in zip(books, nats_per_book, scored_bytes):
        language = by_language.setdefault(book.language, [0.0, 0.0])
        language[0] += book_nats
        language[1] += size
    return Evaluation(total / sum(scored_per_book), total / (math.log(2) * sum(scored_bytes)),
                      {language: nats_sum / (math.log(2) * n_bytes)
                       for language, (nats_sum, n_bytes) in sorted(by_language.items())})


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, *, vocab_size: int, tokens_dir: Path,
          tokenizer_file: Path, checkpoint_dir: Path, periodic_dir: Path | None = None, fresh: bool = False,
          workers: Workers = single_process(),
          on_evaluation: Callable[[TrainingState, Timings], None] | None = None) -> TrainingResult:
    """Train (or resume) until the budget is spent; return where things are.

    The run's checkpoints go to ``checkpoint_dir``, its periodic ones to ``periodic_dir`` (the same folder when
    None). ``on_evaluation`` gets the state and timings after every evaluation, on the main worker.
    """
    train_split, validation_split = TokenSplit(tokens_dir, "train"), TokenSplit(tokens_dir, "validation")
    steps_per_epoch = batches_per_epoch(train_split, validation_split, train_cfg, workers)
    total_steps = train_cfg.max_steps or steps_per_epoch * train_cfg.epochs
    shape = ModelShape.from_config(model_cfg, vocab_size)
    parts = StepParts.fresh(shape, train_cfg, total_steps, workers.device)
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    # The fingerprint keys on the precision and kernel that run.
    train_cfg, choices, measured_step = speed_choices(train_cfg, shape, workers, total_steps, parts)
    whole_split = covers_split(validation_split, train_cfg)
    stamp = fingerprint(model_cfg, train_cfg, tokens_dir, tokenizer_file, whole_split)
    checkpoints = RunCheckpoints.open(checkpoint_dir, stamp, workers, fresh=fresh, periodic_dir=periodic_dir,
                                      also={"params": earlier_params_digests(model_cfg, train_cfg, whole_split)})
    state, timings = TrainingState(), Timings()
    progress = checkpoints.restore(model, optimizer, scheduler, workers)
    if progress is not None:
        state, timings = TrainingState.restored(progress["training_state"]), Timings.restored(progress["timings"])
        log.info("resuming after epoch %d of %d (step %d of %d)", state.epoch, math.ceil(total_steps / steps_per_epoch),
                 state.step, total_steps)
    loop = Loop(state, timings, model, optimizer, scheduler, train_cfg, workers, train_split, validation_split,
                steps_per_epoch, total_steps, checkpoints,
                lambda: snapshot(state.epoch, model, optimizer, scheduler,
                                 {"training_state": asdict(state), "timings": asdict(timings)}, stamp,
                                 {"model": asdict(model_cfg), "train": asdict(train_cfg)}),
                on_evaluation if workers.is_main else None)
    resumed_from = (state.step, state.epoch)

    model.train()
    with deterministic_algorithms():
        loop.run(measured_step or make_train_step(model, optimizer, scheduler, train_cfg, workers))

    workers.check_identical(model)
    if workers.is_main:
        checkpoints.finish(state.step, state.best_step, loop.checkpoint)
    workers.barrier()
    environment = {**workers.environment(), "precision": train_cfg.precision, "attention": train_cfg.attention,
                   "compile": train_cfg.compile, **choices}
    return TrainingResult(state, checkpoints.path(LAST), checkpoints.path(BEST), model.num_parameters(), *resumed_from,
                          steps_per_epoch, environment, timings)


def covers_split(split: TokenSplit, cfg: TrainConfig) -> bool:
    """Does an evaluation score the whole validation split (no token budget, or one the split fits in)?"""
    return not cfg.eval_tokens or cfg.eval_tokens >= len(split) - 1


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


Step = Callable[[torch.Tensor, torch.Tensor], float]  # make_train_step's: one optimizer step, its loss


@dataclass(frozen=True)
class StepParts:
    """What the training step updates: the model, its optimizer and the learning-rate schedule."""
    model: TinyTransformer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def fresh(cls, shape: ModelShape, cfg: TrainConfig, total_steps: int, device: torch.device) -> StepParts:
        """A run's parts at its start: the model initialised from ``cfg.seed``."""
        torch.manual_seed(cfg.seed)
        model = TinyTransformer(shape).to(device)
        optimizer = make_optimizer(model, cfg)
        return cls(model, optimizer, make_scheduler(optimizer, cfg, total_steps))

    @contextlib.contextmanager
    def put_back(self) -> Iterator[None]:
        """Steps taken inside leave the weights, gradients, optimizer state and schedule as they were before (not
        the random generators: see ``speed_choices``). Weights are copied back in place, so a step compiled inside
        stays valid for the same parameters."""
        saved = copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict()))
        try:
            yield
        finally:
            model, optimizer, scheduler = saved
            self.model.load_state_dict(model)
            self.optimizer.load_state_dict(optimizer)
            self.scheduler.load_state_dict(scheduler)
            self.optimizer.zero_grad(set_to_none=True)


def speed_choices(cfg: TrainConfig, shape: ModelShape, workers: Workers, total_steps: int,
                  parts: StepParts | None = None) -> tuple[TrainConfig, dict[str, str], Step | None]:
    """``cfg`` with the precision, attention kernel and compile setting this run of ``total_steps`` uses, why
    each (main worker only), and the compiled step when deciding compiled it and the run can go on with it.

    The main worker decides, measuring once per machine for auto, and every worker follows its choice. The
    compile measurement runs on the run's own ``parts`` (put back as they were; a throwaway set without them):
    a single-process run that compiles goes on with the step compiled there instead of compiling it again.
    Measurements draw random numbers from generators put back afterwards: a run's random stream (dropout's)
    is the same whether its verdicts were measured or cached.
    """
    batch, length = cfg.batch_size // workers.world_size, cfg.max_seq_length
    precision, attention, compiled, why = "", "", False, {}
    measured: list[Step] = []
    generators = [workers.device] if workers.device.type == "cuda" else []
    with torch.random.fork_rng(devices=generators):
        if workers.is_main:
            precision, why["precision_choice"] = resolve_precision(cfg.precision, workers.device, shape, batch, length)
            attention, why["attention_choice"] = resolve_attention(cfg.attention, precision, workers.device, shape,
                                                                   batch, length)
            chosen = replace(cfg, precision=precision, attention=attention)

            def measure() -> dict[str, float]:
                on = parts or StepParts.fresh(shape, cfg, total_steps, workers.device)
                figures, compiled_step = measure_compile(chosen, on, batch)
                measured.append(compiled_step)
                return figures

            compiled, why["compile_choice"] = resolve_compile(
                cfg.compile, total_steps, machine_key(f"{precision} {attention}", shape, batch, length), measure)
    bf16, flash, math_kernel, compiled = workers.sum([float(precision == "bf16"), float(attention == "flash"),
                                                     float(attention == "math"), float(compiled)])
    attention = "flash" if flash else "math" if math_kernel else "default"
    resolved = replace(cfg, precision="bf16" if bf16 else "fp32", attention=attention, compile=compiled > 0)
    reusable = measured and parts is not None and resolved.compile and not workers.distributed
    return resolved, why, measured[0] if reusable else None


COMPILE_STEPS = 1  # steps per round of measure_compile, each variant in each of speed_choices.ROUNDS rounds


def measure_compile(cfg: TrainConfig, parts: StepParts, batch: int) -> tuple[dict[str, float], Step]:
    """The first compiled step's seconds (its compilation) and the step's ms eager and compiled (the best of
    alternating rounds), on fixed random tokens at a worker's batch, with ``parts`` put back afterwards; and the
    compiled step, ready for the same parts."""
    tokens = torch.randint(0, parts.model.shape.vocab_size, (batch, cfg.max_seq_length + 1),
                           generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # as the data's batches lie: views of one (B, T+1) block
    workers = Workers(rank=0, world_size=1, device=next(parts.model.parameters()).device)
    steps = {compiled: make_train_step(parts.model, parts.optimizer, parts.scheduler, replace(cfg, compile=compiled),
                                       workers)
             for compiled in (False, True)}
    with deterministic_algorithms(), parts.put_back():
        parts.model.train()
        steps[False](inputs, targets)
        started = time.perf_counter()
        steps[True](inputs, targets)
        compile_s = time.perf_counter() - started

        def timed(step: Step) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                for _ in range(COMPILE_STEPS):
                    step(inputs, targets)
                return (time.perf_counter() - started) / COMPILE_STEPS
            return run

        seconds = best_of_rounds({"eager": timed(steps[False]), "compiled": timed(steps[True])})
    figures = {"compile_s": compile_s, "eager_ms": seconds["eager"] * 1e3, "compiled_ms": seconds["compiled"] * 1e3}
    return figures, steps[True]


def history_with_seconds(history: list[dict[str, Any]], timings: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Each history row with the training seconds (evaluation excluded) from the start to it."""
    rows, seconds = [], 0.0
    for row, timing in zip(history, timings):
        seconds += timing["seconds"]
        rows.append({**row, "seconds": seconds})
    return rows


@dataclass
class Loop:
    """One run's steps, from where its state stands to the end of its budget: what to do after each step."""
    state: TrainingState
    timings: Timings
    model: TinyTransformer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: TrainConfig
    workers: Workers
    train_split: TokenSplit
    validation_split: TokenSplit
    steps_per_epoch: int
    total_steps: int
    checkpoints: RunCheckpoints
    checkpoint: Callable[[], dict[str, Any]]  # the checkpoint of the state now (``snapshot``)
    on_evaluation: Callable[[TrainingState, Timings], None] | None
    # Training seconds (evaluation and checkpoints excluded) since the last history row, and when the clock runs.
    _seconds: float = 0.0
    _started: float = 0.0
    _last_saved: float = 0.0  # wall time of the last checkpoint of the resume point

    def run(self, step: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
        """Train epoch by epoch (the first one from where the state stands within it) until the budget is spent."""
        self._last_saved = time.monotonic()
        while self.state.step < self.total_steps:
            epoch, start = self.state.step // self.steps_per_epoch + 1, self.state.step % self.steps_per_epoch
            steps = min(self.steps_per_epoch - start, self.total_steps - self.state.step)
            batches = self.train_split.epoch_batches(self.cfg.max_seq_length, self.cfg.batch_size,
                                                     epoch_generator(self.cfg.seed, epoch), start)
            bar = tqdm(batches, total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch}/{self.epochs}",
                       unit="step", disable=None if self.workers.is_main else True, leave=False)
            self._started = time.perf_counter()
            for _, (inputs, targets) in zip(range(steps), bar):
                self.after_step(step(inputs, targets), targets.numel(), epoch, bar)
            bar.close()

    @property
    def epochs(self) -> float:
        """The budget in epochs."""
        return self.cfg.epochs if not self.cfg.max_steps else round(self.total_steps / self.steps_per_epoch, 2)

    def after_step(self, loss: float, targets: int, epoch: int, bar: tqdm) -> None:
        state, cfg = self.state, self.cfg
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at epoch {epoch}, step {state.step % self.steps_per_epoch + 1} of "
                f"{self.steps_per_epoch} (global step {state.step + 1}); try a lower learning_rate than "
                f"{cfg.learning_rate:g} (e.g. dvc exp run -S learning_rate={cfg.learning_rate / 3:.2g}). The last "
                f"good checkpoint, at step {self.checkpoints.newest_step()}, is kept.")
        state.step += 1
        for running in (state.since_evaluation, state.since_log):
            running[0] += loss * targets
            running[1] += targets
        if state.step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        epoch_end, run_end = state.step % self.steps_per_epoch == 0, state.step == self.total_steps
        if epoch_end:
            state.epoch = epoch
        if state.step % cfg.log_every_steps == 0 or run_end:
            self.log_row()
        improved = False
        if epoch_end or run_end or (cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0):
            improved = self.evaluate(epoch_end)
        if self.workers.is_main:
            self.save(improved, epoch_end, run_end)

    def position(self) -> float:
        """Where training stands, in epochs."""
        return round(self.state.step / self.steps_per_epoch, 6)

    def clock(self) -> float:
        """Training seconds since the last history row, the clock restarted."""
        now = time.perf_counter()
        self._seconds += now - self._started
        self._started = now
        return self._seconds

    def log_row(self) -> None:
        state = self.state
        loss_sum, targets = state.since_log
        state.log.append({"step": state.step, "epoch": self.position(), "tokens": self.tokens(),
                          "train_loss": loss_sum / targets, "learning_rate": self.scheduler.get_last_lr()[0]})
        state.since_log = [0.0, 0]
        self.timings.log_seconds.append(self.timings.seconds + self.clock())

    def tokens(self) -> int:
        return self.state.step * self.cfg.batch_size * self.cfg.max_seq_length

    def evaluate(self, epoch_end: bool) -> bool:
        """A history row; whether its validation loss is the best yet."""
        state, cfg = self.state, self.cfg
        seconds = self.clock()
        loss_sum, targets = state.since_evaluation
        started = time.perf_counter()
        evaluation = evaluate(self.model, self.validation_split, cfg.max_seq_length, cfg.eval_batch_size,
                              cfg.precision, self.workers, cfg.eval_tokens)
        self.timings.evaluation_seconds += time.perf_counter() - started
        state.history.append(evaluation_row(state, self.position(), loss_sum / targets, evaluation, self.scheduler,
                                            cfg))
        self.timings.rows.append({"seconds": seconds, "tokens_per_sec": targets / seconds})
        state.since_evaluation, self._seconds = [0.0, 0], 0.0
        if epoch_end:
            self.epoch_ended(evaluation.loss)
        if self.on_evaluation is not None:
            self.on_evaluation(state, self.timings)
        self._started = time.perf_counter()
        if evaluation.loss >= state.best_validation_loss:
            return False
        state.best_step, state.best_epoch, state.best_validation_loss = state.step, self.position(), evaluation.loss
        return True

    def epoch_ended(self, validation_loss: float) -> None:
        state, cfg = self.state, self.cfg
        epoch = epoch_rows(history_with_seconds(state.history, self.timings.rows))[-1]
        log.info("epoch %d/%s: train loss %.4f, validation loss %.4f (%.3f bits/byte), %.0f tokens/s, %.1fs of training",
                 state.epoch, self.epochs, epoch["train_loss"], validation_loss, epoch["validation_bits_per_byte"],
                 self.steps_per_epoch * cfg.batch_size * cfg.max_seq_length / epoch["epoch_seconds"],
                 epoch["epoch_seconds"])
        if state.epoch >= 2 and validation_loss > cfg.plateau_loss:
            log.warning("validation loss %.2f is still above %.1f after %d epochs: the model is barely learning. "
                        "Try a different learning_rate (now %g), more epochs, or check the corpus and tokenizer "
                        "metrics (README: Troubleshooting).", validation_loss, cfg.plateau_loss, state.epoch,
                        cfg.learning_rate)

    def save(self, improved: bool, epoch_end: bool, run_end: bool) -> None:
        """The checkpoints this step calls for: best (the evaluation improved), periodic (every
        train.checkpoint_every epochs), then the resume point (an epoch's or the run's end, every
        train.checkpoint_every_steps steps, every train.checkpoint_minutes minutes)."""
        state, cfg = self.state, self.cfg
        started = time.perf_counter()
        if improved:
            self.checkpoints.save(BEST, state.step, self.checkpoint())
        if epoch_end and state.epoch % cfg.checkpoint_every == 0:
            self.checkpoints.save(epoch_name(state.epoch), state.step, self.checkpoint())
        due = (epoch_end or run_end or (cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0)
               or (cfg.checkpoint_minutes and time.monotonic() - self._last_saved >= 60 * cfg.checkpoint_minutes))
        if due:
            self.checkpoints.save(LAST, state.step, self.checkpoint())
            self._last_saved = time.monotonic()
        spent = time.perf_counter() - started
        self.timings.checkpoint_seconds += spent
        self._started += spent  # checkpoints are not training time


def epoch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per epoch from history rows with their cumulative ``seconds``: the epoch's end evaluation, with the
    epoch's mean training loss (each row's weighted by the tokens it covers) and its training seconds
    (``epoch_seconds``). A run that ended within an epoch ends with that epoch unfinished: it has no row."""
    epochs: list[dict[str, Any]] = []
    loss_sum, tokens, covered_before, seconds_before = 0.0, 0, 0, 0.0
    for row in rows:
        covered = row["tokens"] - covered_before
        loss_sum, tokens, covered_before = loss_sum + row["train_loss"] * covered, tokens + covered, row["tokens"]
        if float(row["epoch"]).is_integer():
            epochs.append({**row, "epoch": int(row["epoch"]), "train_loss": loss_sum / tokens,
                           "epoch_seconds": row["seconds"] - seconds_before})
            loss_sum, tokens, seconds_before = 0.0, 0, row["seconds"]
    return epochs


def evaluation_row(state: TrainingState, epochs: float, train_loss: float, evaluation: Evaluation,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig) -> dict[str, Any]:
    """A history row: where training is (step, epochs, tokens seen) and what it scores there."""
    return {"step": state.step, "epoch": round(epochs, 6), "tokens": state.step * cfg.batch_size * cfg.max_seq_length,
            "train_loss": train_loss, "validation_loss": evaluation.loss,
            "validation_bits_per_byte": evaluation.bits_per_byte,
            "validation_bits_per_byte_by_language": evaluation.bits_per_byte_by_language,
            "learning_rate": scheduler.get_last_lr()[0]}
