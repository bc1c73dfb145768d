"""Steps and seconds to a validation loss: two training recipes, alternating on the same data.

    python -m bench.time_to_loss --target 4.84 --recipe "optimizer=muon,schedule=wsd" [--baseline ...]
        [--eval-every 20] [--max-steps 600] [--json] [--params params.yaml]

A recipe is params.yaml's train section with ``key=value`` overrides of train.* keys (and
``learning_rate``). Both recipes train the default model from the same seed on the token data of the
tokenize stage, taking the same batches in the same order; they alternate every ``--eval-every`` optimizer
steps (so the machine's noise hits both alike), and each is evaluated on the whole validation split at
those points, as the train stage evaluates. A recipe stops once its validation loss is at or below
``--target``, or after ``--max-steps``. Seconds are training time (evaluation excluded; the step's
compilation, which both recipes share, happens before either starts and is reported apart). The schedules see the default run's length in steps (``epochs`` of
data), so a recipe is measured as it would run in the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from src import paths
from src.config import ConfigError, TrainConfig, check_field, load_config, parse_yaml
from src.data.dataset import TokenSplit
from src.data.tokenizer import load_tokenizer
from src.model.transformer import ModelShape, TinyTransformer
from src.training.optimizers import make_optimizer
from src.training.distributed import processor_name
from src.training.schedule import make_scheduler
from src.training.distributed import single_process
from src.training.step import deterministic_algorithms, epoch_generator, make_train_step
from src.training.trainer import evaluate, speed_choices


def recipe(base: TrainConfig, overrides: str) -> TrainConfig:
    """``base`` with ``key=value,...`` overrides of its fields, each checked by the field's own rule."""
    changes: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, _, value = item.partition("=")
        name = key.removeprefix("train.")
        if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise SystemExit(f"--recipe: {key!r} is not a train.* key")
        changes[name] = check_field(TrainConfig, name, parse_yaml(value, key))
    return dataclasses.replace(base, **changes)


def batches(split: TokenSplit, cfg: TrainConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train stage's batches, epoch after epoch, from the seed."""
    epoch = 0
    while True:
        epoch += 1
        yield from split.epoch_batches(cfg.max_seq_length, cfg.batch_size, epoch_generator(cfg.seed, epoch))


class Run:
    """One recipe's model, optimizer, schedule, compiled step, batches and progress."""

    def __init__(self, name: str, cfg: TrainConfig, shape: ModelShape, train_split: TokenSplit, total_steps: int):
        torch.manual_seed(cfg.seed)
        self.name, self.cfg = name, cfg
        self.model = TinyTransformer(shape).train()
        optimizer = make_optimizer(self.model, cfg)
        self.step = make_train_step(self.model, optimizer, make_scheduler(optimizer, cfg, total_steps), cfg)
        self.batches = batches(train_split, cfg)
        self.steps, self.seconds, self.history = 0, 0.0, []
        self.reached: dict[str, float] | None = None

    def train(self, steps: int) -> None:
        started = time.perf_counter()
        for _ in range(steps):
            self.step(*next(self.batches))
        self.seconds += time.perf_counter() - started
        self.steps += steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=4.84, help="validation loss, nats per token")
    parser.add_argument("--baseline", default="", help="overrides of the first recipe (default: params.yaml)")
    parser.add_argument("--recipe", default="optimizer=muon,schedule=wsd", help="overrides of the second recipe")
    parser.add_argument("--eval-every", type=int, default=20, help="optimizer steps between evaluations")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.params)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    train_split, validation_split = TokenSplit(paths.TOKENS_DIR, "train"), TokenSplit(paths.TOKENS_DIR, "validation")
    shape = ModelShape.from_config(cfg.model, load_tokenizer(cfg.tokenizer_name.model).get_piece_size())
    total_steps = train_split.batches_per_epoch(cfg.train.max_seq_length, cfg.train.batch_size) * cfg.train.epochs
    base, why, _ = speed_choices(cfg.train, shape, single_process(), total_steps)
    with deterministic_algorithms():
        # torch.compile compiles the step's forward once per process and both recipes share it: a throwaway
        # run compiles it first, so that neither recipe's seconds hold the compilation.
        compiling = Run("compile", base, shape, train_split, total_steps)
        compiling.train(2)
        runs = [Run("baseline", recipe(base, args.baseline), shape, train_split, total_steps),
                Run("recipe", recipe(base, args.recipe), shape, train_split, total_steps)]
        while any(run.reached is None and run.steps < args.max_steps for run in runs):
            for run in runs:
                if run.reached is not None or run.steps >= args.max_steps:
                    continue
                run.train(min(args.eval_every, args.max_steps - run.steps))
                loss = evaluate(run.model, validation_split, base.max_seq_length, base.eval_batch_size,
                                run.cfg.precision).loss
                run.history.append({"step": run.steps, "seconds": round(run.seconds, 2), "validation_loss": round(loss, 4)})
                if not args.json:
                    print(f"{run.name:>8}: step {run.steps:4d}, {run.seconds:6.1f} s, validation loss {loss:.4f}",
                          flush=True)
                if loss <= args.target:
                    run.reached = {"steps": run.steps, "seconds": round(run.seconds, 2)}

    result = {"benchmark": "time_to_loss", "target": args.target, "cpu": processor_name(),
              "threads": torch.get_num_threads(), "precision": base.precision, "attention": base.attention, **why,
              "eval_every": args.eval_every, "compile_seconds": round(compiling.seconds, 2),
              "recipes": {run.name: {"overrides": args.baseline if run.name == "baseline" else args.recipe,
                                     "reached": run.reached is not None, **(run.reached or {}),
                                     "best_validation_loss": min(h["validation_loss"] for h in run.history),
                                     "history": run.history} for run in runs}}
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result["recipes"].items():
            where = f"{r['steps']} steps, {r['seconds']} s" if r["reached"] else f"not reached ({r['best_validation_loss']})"
            print(f"{name:>8} [{r['overrides'] or 'params.yaml'}]: {where}")


if __name__ == "__main__":
    main()
