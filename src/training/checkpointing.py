"""The checkpoints of one training run: what produced them, where to resume, what to write, what a finished run leaves.

The run's folder holds ``last.pt`` (the newest state) and ``best.pt`` (the state after the epoch with the
lowest validation loss); every ``train.checkpoint_every`` epochs a periodic ``checkpoint_epoch_E.pt`` goes to
its own folder (the pipeline's: data/, the quickstart's names). After epoch E they are written in that order:
best (if E improved), checkpoint_epoch_E, last. Two checkpoints of one recipe at one epoch hold the same state,
so whichever survives a crash serves for any of them.

The invariant a finished run leaves, and that every run restores before it returns: ``last.pt`` holds
the final epoch and ``best.pt`` the best one. A run resumes from the newest checkpoint of its recipe;
when the best epoch's state was lost (best.pt deleted or damaged, no other checkpoint of that epoch),
it resumes from before that epoch instead, and training it again restores it. A checkpoint that cannot
be read, or that another recipe made, is moved to the run folder's ``set_aside/``, never deleted. Periodic
checkpoints an earlier version wrote into the run folder (``epoch_NNNN.pt``) are moved to their new names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from src.atomic import remove_leftovers, write_atomic
from src.config import ModelConfig, TrainConfig
from src.model.checkpoint import CheckpointError, code_digest, file_digest, load_checkpoint, save_checkpoint, set_aside
from src.paths import PERIODIC_CHECKPOINT
from src.training.distributed import Workers

log = logging.getLogger(__name__)

SRC = Path(__file__).resolve().parents[1]
# The code whose change makes an old checkpoint a different recipe: what decides a run's numbers.
RECIPE_CODE = (SRC / "model" / "transformer.py", SRC / "model" / "loss.py", SRC / "data" / "dataset.py",
               SRC / "training" / "step.py", SRC / "training" / "optimizers.py", SRC / "training" / "schedule.py")
# Code digests of earlier versions whose checkpoints this code continues exactly: their numbers are made by the
# code RECIPE_CODE holds now, only their bookkeeping differed. An entry is added when a change leaves the numbers
# alone, and the set is emptied when they change. Digests are of Python 3.11's syntax trees (``code_digest``).
SAME_NUMERICS = {
    # 27c74df, which hashed all of src/model, src/training and src/data/dataset.py, before the quickstart's names.
    "70d39aceb8cc43da035b800c10ba75f962e9fac847b00f14f813df85631e5d63",
    # 93f98e9, before the token files' writing left dataset.py for token_files.py.
    "f25a95b7e289e688674e0196cc2530fcfbe2124124b88743b31aa01f6c01706e",
}
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
        "code": code_digest(*RECIPE_CODE),
    }


def same_recipe(recorded: dict[str, str] | None, stamp: dict[str, str]) -> bool:
    """Did a checkpoint's recorded fingerprint come from this recipe (its code, or code of the same numbers)?"""
    if not isinstance(recorded, dict):
        return False
    same_code = recorded.get("code") == stamp["code"] or recorded.get("code") in SAME_NUMERICS
    return same_code and all(recorded.get(key) == value for key, value in stamp.items() if key != "code")


def snapshot(epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any], stamp: dict[str, str],
             config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's content: everything a resumed run needs to continue exactly, and what produced it."""
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), **progress,
            "shape": asdict(model.shape), "fingerprint": stamp, "config": config}


_PERIODIC = re.compile(re.escape(PERIODIC_CHECKPOINT).replace(r"\{epoch\}", r"(\d+)") + "$")
_LEGACY_PERIODIC = re.compile(r"epoch_(\d{4,})\.pt$")  # in the run folder, before the quickstart's names


def epoch_name(epoch: int) -> str:
    return PERIODIC_CHECKPOINT.format(epoch=epoch)


class RunCheckpoints:
    """One run's checkpoints (its folder, and the periodic ones in ``periodic_dir``), and the epoch each usable
    one holds. ``path(name)`` is where the checkpoint called ``name`` lives."""

    def __init__(self, directory: Path, stamp: dict[str, str], checkpoint_every: int, periodic_dir: Path | None = None):
        self.directory, self.stamp, self.checkpoint_every = Path(directory), stamp, checkpoint_every
        self.periodic_dir = Path(periodic_dir) if periodic_dir is not None else self.directory
        self.epochs: dict[str, int] = {}  # file name -> epoch, for the checkpoints of this recipe

    @classmethod
    def open(cls, directory: Path, stamp: dict[str, str], checkpoint_every: int, workers: Workers,
             fresh: bool = False, periodic_dir: Path | None = None) -> RunCheckpoints:
        """The folder scanned by every worker; the main worker tidies it first, so all find one resume point."""
        checkpoints = cls(directory, stamp, checkpoint_every, periodic_dir)
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
        return (self.periodic_dir if _PERIODIC.match(name) else self.directory) / name

    def files(self) -> list[Path]:
        """Every checkpoint file of the run, in its folder and periodic ones beside it."""
        periodic = [p for p in sorted(self.periodic_dir.glob("*.pt")) if _PERIODIC.match(p.name)]
        own = [p for p in sorted(self.directory.glob("*.pt")) if p not in periodic]
        return own + periodic

    def move_legacy_periodic(self) -> None:
        """Give periodic checkpoints an earlier version wrote into the run folder (epoch_0005.pt) their names now."""
        for path in sorted(self.directory.glob("epoch_*.pt")):
            match = _LEGACY_PERIODIC.match(path.name)
            target = self.path(epoch_name(int(match.group(1)))) if match else None
            if target is not None and not target.exists():
                self.periodic_dir.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                log.info("moved %s to %s", path, target)

    def scan(self, *, tidy: bool, fresh: bool = False) -> None:
        """Record the epoch of every checkpoint of this recipe in the folder.

        ``tidy``: this process owns the folder (one process does, under torchrun rank 0, before the others
        scan): it clears interrupted writes and sets aside what this run cannot use (``fresh``: everything).
        """
        if tidy:
            self.directory.mkdir(parents=True, exist_ok=True)
            for folder in {self.directory, self.periodic_dir}:
                for leftover in remove_leftovers(folder):
                    log.info("removed %s, left by an interrupted write", leftover)
            self.move_legacy_periodic()
        self.epochs = {}
        for path in self.files():
            if fresh:
                log.info("fresh start: %s set aside to %s", path, set_aside(path, self.directory))
                continue
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                if tidy:
                    log.warning("%s; set aside to %s", exc, set_aside(path, self.directory))
                continue
            if not same_recipe(state.get("fingerprint"), self.stamp):
                if tidy:
                    changed = [k for k in self.stamp if (state.get("fingerprint") or {}).get(k) != self.stamp[k]]
                    log.warning("checkpoint %s was made with different %s; set aside to %s, training starts fresh",
                                path, ", ".join(changed), set_aside(path, self.directory))
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
