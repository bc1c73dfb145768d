"""The checkpoints of one training run: what produced them, where to resume, what to write, what a finished run leaves.

The run's folder holds ``last.pt`` (the resume point: written at each epoch's end, at the run's end, and every
``train.checkpoint_every_steps`` steps or ``train.checkpoint_minutes`` minutes within an epoch too) and
``best.pt`` (the state at the evaluation with the lowest validation loss); every ``train.checkpoint_every``
epochs a periodic ``checkpoint_epoch_E.pt`` goes to its own folder (the pipeline's: data/, the quickstart's
names). At one step they are written in that order: best, periodic, last. Two checkpoints of one recipe at one
step hold the same state, so whichever survives a crash serves for any of them.

The invariant a finished run leaves, and that every run restores before it returns: ``last.pt`` holds
the final step and ``best.pt`` the best one. A run resumes from the newest checkpoint of its recipe;
when the best step's state was lost (best.pt deleted or damaged, no other checkpoint of that step),
it resumes from before that step instead, and training it again restores it. A checkpoint that cannot
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
    # c1ba323, before runs resumed within an epoch and evaluated a sample of the validation split.
    "0eb3340ab9c8b1e803eba6691dbeaa9582e210825e5621ee247c724f23f999d9",
}
# Train params that do not change a run's weights: a run may resume under other values of these.
BOOKKEEPING_PARAMS = ("checkpoint_every", "checkpoint_every_steps", "checkpoint_minutes", "eval_every_steps",
                      "log_every_steps", "plateau_loss", "compile", "device", "nproc", "nnodes", "threads")
# Before budgets, mid-epoch checkpoints and sampled evaluations (c1ba323 and earlier), the params digest held every
# train param but these, the evaluation interval included; and none of the ones added since.
_EARLIER_BOOKKEEPING = ("checkpoint_every", "plateau_loss", "compile", "device", "nproc", "threads")
_ADDED_SINCE = ("max_steps", "eval_tokens", "log_every_steps", "checkpoint_every_steps", "checkpoint_minutes", "nnodes")
LAST = "last.pt"
BEST = "best.pt"


def _digest(model_cfg: ModelConfig, train: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"model": asdict(model_cfg), "train": train}, sort_keys=True).encode()).hexdigest()


def params_digest(model_cfg: ModelConfig, train_cfg: TrainConfig, whole_split: bool) -> str:
    """The params that shape a run's numbers. A budget of 0 steps (``epochs`` decide) and a token budget the
    validation split fits in (``whole_split``) are what runs were before those knobs: they are left out."""
    train = {name: value for name, value in asdict(train_cfg).items() if name not in BOOKKEEPING_PARAMS}
    if not train_cfg.max_steps:
        del train["max_steps"]
    if whole_split:
        del train["eval_tokens"]
    return _digest(model_cfg, train)


def earlier_params_digests(model_cfg: ModelConfig, train_cfg: TrainConfig, whole_split: bool) -> set[str]:
    """The params digest an earlier version gave a run of these params, with the evaluation interval it held (0, its
    default, or the one now): empty where these params use a knob added since."""
    if train_cfg.max_steps or not whole_split:
        return set()
    train = {name: value for name, value in asdict(train_cfg).items()
             if name not in _EARLIER_BOOKKEEPING + _ADDED_SINCE}
    return {_digest(model_cfg, {**train, "eval_every_steps": interval}) for interval in (0, train_cfg.eval_every_steps)}


def fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, tokens_dir: Path, tokenizer_file: Path,
                whole_split: bool) -> dict[str, str]:
    """What produced a checkpoint: data, tokenizer, the params that shape the run, and the code."""
    return {
        "data": file_digest(*(tokens_dir / name for name in ("train.bin", "validation.bin", "meta.json"))),
        "tokenizer": file_digest(tokenizer_file),
        "params": params_digest(model_cfg, train_cfg, whole_split),
        "code": code_digest(*RECIPE_CODE),
    }


def same_recipe(recorded: dict[str, str] | None, stamp: dict[str, str], also: dict[str, set[str]]) -> bool:
    """Did a checkpoint's recorded fingerprint come from this recipe? ``also``: per part, the earlier digests of
    the same thing (the code of the same numbers, the params as earlier versions hashed them)."""
    if not isinstance(recorded, dict):
        return False
    return all(recorded.get(key) == value or recorded.get(key) in also.get(key, set()) for key, value in stamp.items())


def snapshot(epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any], stamp: dict[str, str],
             config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's content: everything a resumed run needs to continue exactly, and what produced it."""
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), **progress,
            "shape": asdict(model.shape), "fingerprint": stamp, "config": config}


def epoch_name(epoch: int) -> str:
    return PERIODIC_CHECKPOINT.format(epoch=epoch)


_PERIODIC = re.compile(re.escape(PERIODIC_CHECKPOINT).replace(r"\{epoch\}", r"(\d+)") + "$")
_LEGACY_PERIODIC = re.compile(r"epoch_(\d{4,})\.pt$")  # in the run folder, before the quickstart's names


def step_of(state: dict[str, Any]) -> int:
    """The optimizer steps a checkpoint's run had taken."""
    return state["training_state"]["step"]


class RunCheckpoints:
    """One run's checkpoints (its folder, and the periodic ones in ``periodic_dir``), and the step each usable
    one holds. ``path(name)`` is where the checkpoint called ``name`` lives."""

    def __init__(self, directory: Path, stamp: dict[str, str], periodic_dir: Path | None = None,
                 also: dict[str, set[str]] | None = None):
        self.directory, self.stamp, self.also = Path(directory), stamp, also or {}
        self.periodic_dir = Path(periodic_dir) if periodic_dir is not None else self.directory
        self.steps: dict[str, int] = {}  # file name -> step, for the checkpoints of this recipe

    @classmethod
    def open(cls, directory: Path, stamp: dict[str, str], workers: Workers, *, fresh: bool = False,
             periodic_dir: Path | None = None, also: dict[str, set[str]] | None = None) -> RunCheckpoints:
        """The run's checkpoints, tidied and scanned by the main worker, the one that reads and writes them."""
        checkpoints = cls(directory, stamp, periodic_dir, {"code": SAME_NUMERICS, **(also or {})})
        if workers.is_main:
            checkpoints.scan(fresh=fresh)
        return checkpoints

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, workers: Workers) -> dict[str, Any] | None:
        """Load the resume point into the model, optimizer, scheduler and RNG of every worker (the main one reads
        it and hands it to the others); return its progress (``training_state`` and ``timings``, as ``snapshot``
        took them), or None to start fresh."""
        resume = workers.broadcast(self.resume_point() if workers.is_main else None)
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

    def scan(self, *, fresh: bool = False) -> None:
        """Clear interrupted writes, set aside what this run cannot use (``fresh``: everything), and record the
        step of every checkpoint of this recipe."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for folder in {self.directory, self.periodic_dir}:
            for leftover in remove_leftovers(folder):
                log.info("removed %s, left by an interrupted write", leftover)
        self.move_legacy_periodic()
        self.steps = {}
        for path in self.files():
            if fresh:
                log.info("fresh start: %s set aside to %s", path, set_aside(path, self.directory))
                continue
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("%s; set aside to %s", exc, set_aside(path, self.directory))
                continue
            if not same_recipe(state.get("fingerprint"), self.stamp, self.also):
                changed = [k for k in self.stamp if (state.get("fingerprint") or {}).get(k) != self.stamp[k]]
                log.warning("checkpoint %s was made with different %s; set aside to %s, training starts fresh",
                            path, ", ".join(changed), set_aside(path, self.directory))
                continue
            self.steps[path.name] = step_of(state)

    def newest_step(self) -> int:
        return max(self.steps.values(), default=0)

    def resume_point(self) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: start fresh); see the module docstring for the choice."""
        if not self.steps:
            return None
        newest = load_checkpoint(self.path(max(self.steps, key=self.steps.get)))
        saved = newest["training_state"]
        best_step = saved.get("best_step", next((row["step"] for row in saved["history"]
                                                 if row["epoch"] == saved.get("best_epoch")), 0))
        if best_step in self.steps.values() or best_step == 0:
            return newest
        earlier = {name: step for name, step in self.steps.items() if step < best_step}
        log.warning("no checkpoint holds step %d, the best one: resuming from step %d to train it again",
                    best_step, max(earlier.values(), default=0))
        return load_checkpoint(self.path(max(earlier, key=earlier.get))) if earlier else None

    def save(self, name: str, step: int, state: dict[str, Any]) -> None:
        save_checkpoint(self.path(name), state)
        self.steps[name] = step

    def finish(self, final_step: int, best_step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Make last.pt hold ``final_step`` and best.pt ``best_step``, whatever a crash or a user left."""
        if self.steps.get(LAST) != final_step:
            self.save(LAST, final_step, state())
        if self.steps.get(BEST) != best_step:
            source = next(name for name, step in self.steps.items() if step == best_step)
            write_atomic(self.path(BEST), self.path(source).read_bytes())
            self.steps[BEST] = best_step
