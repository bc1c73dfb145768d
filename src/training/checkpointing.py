"""The checkpoints of one training run: what produced them, where to resume, what to write, what a finished run leaves.

The folder holds ``last.pt`` (the newest state), ``best.pt`` (the state after the epoch with the lowest
validation loss) and ``epoch_NNNN.pt`` every ``train.checkpoint_every`` epochs. After epoch E they are
written in that order: best (if E improved), epoch_E, last. Two checkpoints of one recipe at one epoch
hold the same state, so whichever survives a crash serves for any of them.

The invariant a finished run leaves, and that every run restores before it returns: ``last.pt`` holds
the final epoch and ``best.pt`` the best one. A run resumes from the newest checkpoint of its recipe;
when the best epoch's state was lost (best.pt deleted or damaged, no other checkpoint of that epoch),
it resumes from before that epoch instead, and training it again restores it. A checkpoint that cannot
be read, or that another recipe made, is moved to ``set_aside/``, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from src.atomic import remove_leftovers, write_atomic
from src.config import ModelConfig, TrainConfig
from src.model.checkpoint import CheckpointError, code_digest, file_digest, load_checkpoint, save_checkpoint, set_aside
from src.training.distributed import Workers

log = logging.getLogger(__name__)

SRC = Path(__file__).resolve().parents[1]
# The code whose change makes an old checkpoint a different recipe.
TRAINING_CODE = (SRC / "model", SRC / "training", SRC / "data" / "dataset.py")
# Train params that do not change the recipe: a run may resume under other values of these.
BOOKKEEPING_PARAMS = ("checkpoint_every", "plateau_loss", "compile", "device", "nproc", "threads")
LAST = "last.pt"
BEST = "best.pt"


def fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, tokens_dir: Path,
                tokenizer_file: Path) -> dict[str, str]:
    """What produced a checkpoint: data, tokenizer, the params that shape the run, and the code."""
    shaping = {"model": asdict(model_cfg), "train": asdict(train_cfg)}
    for name in BOOKKEEPING_PARAMS:
        shaping["train"].pop(name)
    return {
        "data": file_digest(*(tokens_dir / name for name in ("train.bin", "validation.bin", "meta.json"))),
        "tokenizer": file_digest(tokenizer_file),
        "params": hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest(),
        "code": code_digest(*TRAINING_CODE),
    }


def snapshot(epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any], stamp: dict[str, str],
             config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's content: everything a resumed run needs to continue exactly, and what produced it."""
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), **progress,
            "shape": asdict(model.shape), "fingerprint": stamp, "config": config}


def epoch_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


class RunCheckpoints:
    """One run's checkpoint folder, and the epoch each usable checkpoint in it holds."""

    def __init__(self, directory: Path, stamp: dict[str, str], checkpoint_every: int):
        self.directory, self.stamp, self.checkpoint_every = Path(directory), stamp, checkpoint_every
        self.epochs: dict[str, int] = {}  # file name -> epoch, for the checkpoints of this recipe

    @classmethod
    def open(cls, directory: Path, stamp: dict[str, str], checkpoint_every: int, workers: Workers,
             fresh: bool = False) -> RunCheckpoints:
        """The folder scanned by every worker; the main worker tidies it first, so all find one resume point."""
        checkpoints = cls(directory, stamp, checkpoint_every)
        if workers.is_main:
            checkpoints.scan(tidy=True, fresh=fresh)
        workers.barrier()
        if not workers.is_main:
            checkpoints.scan(tidy=False)
        return checkpoints

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any] | None:
        """Load the resume point into the model, optimizer, scheduler and RNG; return its progress
        (``training_state`` and ``timings``, as ``snapshot`` took them), or None to start fresh."""
        resume = self.resume_point()
        if resume is None:
            return None
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        return {"training_state": resume["training_state"], "timings": resume["timings"]}

    def path(self, name: str) -> Path:
        return self.directory / name

    def scan(self, *, tidy: bool, fresh: bool = False) -> None:
        """Record the epoch of every checkpoint of this recipe in the folder.

        ``tidy``: this process owns the folder (one process does, under torchrun rank 0, before the others
        scan): it clears interrupted writes and sets aside what this run cannot use (``fresh``: everything).
        """
        if tidy:
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in remove_leftovers(self.directory):
                log.info("removed %s, left by an interrupted write", leftover)
        self.epochs = {}
        for path in sorted(self.directory.glob("*.pt")):
            if fresh:
                log.info("fresh start: %s set aside to %s", path, set_aside(path))
                continue
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                if tidy:
                    log.warning("%s; set aside to %s", exc, set_aside(path))
                continue
            if state.get("fingerprint") != self.stamp:
                if tidy:
                    changed = [k for k in self.stamp if (state.get("fingerprint") or {}).get(k) != self.stamp[k]]
                    log.warning("checkpoint %s was made with different %s; set aside to %s, training starts fresh",
                                path, ", ".join(changed), set_aside(path))
                continue
            self.epochs[path.name] = state["epoch"]

    def resume_point(self) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: start fresh); see the module docstring for the choice."""
        if not self.epochs:
            return None
        newest = load_checkpoint(self.path(max(self.epochs, key=self.epochs.get)))
        best_epoch = newest["training_state"]["best_epoch"]
        if best_epoch in self.epochs.values():
            return newest
        earlier = {name: epoch for name, epoch in self.epochs.items() if epoch < best_epoch}
        log.warning("no checkpoint holds epoch %d, the best one: resuming from epoch %d to train it again",
                    best_epoch, max(earlier.values(), default=0))
        return load_checkpoint(self.path(max(earlier, key=earlier.get))) if earlier else None

    def save(self, name: str, epoch: int, state: dict[str, Any]) -> None:
        save_checkpoint(self.path(name), state)
        self.epochs[name] = epoch

    def after_epoch(self, epoch: int, improved: bool, state: Callable[[], dict[str, Any]]) -> None:
        """Write the epoch's checkpoints: best (if it improved), periodic, then last."""
        if improved:
            self.save(BEST, epoch, state())
        if epoch % self.checkpoint_every == 0:
            self.save(epoch_name(epoch), epoch, state())
        self.save(LAST, epoch, state())

    def finish(self, final_epoch: int, best_epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        """Make last.pt hold ``final_epoch`` and best.pt ``best_epoch``, whatever a crash or a user left."""
        if self.epochs.get(LAST) != final_epoch:
            self.save(LAST, final_epoch, state())
        if self.epochs.get(BEST) != best_epoch:
            source = next(name for name, epoch in self.epochs.items() if epoch == best_epoch)
            write_atomic(self.path(BEST), self.path(source).read_bytes())
            self.epochs[BEST] = best_epoch
