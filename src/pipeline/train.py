"""Stage `train`: train TinyTransformer on the token dataset, resuming if it can (exit code 4 on failure).

    python -m src.pipeline.train [--params params.yaml]

An interrupted run (Ctrl+C, kill -9, reboot) continues from the newest checkpoint made by the same
data, tokenizer, params and code. Set TT_TRAIN_FRESH=1 to set existing checkpoints aside and start over.

With ``train.nproc`` > 1 the stage launches itself through torchrun (DDP); a worker's exit code is the
stage's. Started by torchrun directly (``torchrun --nproc_per_node=N -m src.pipeline.train``) it works
the same. With ``train.nnodes`` > 1 it runs on that many machines: `dvc repro` on machine 0 (the one that
writes the outputs), `python -m src.pipeline.train` on the others, each with TT_MASTER=host:port and its
TT_NODE_RANK (docs/WORKFLOWS.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import ModelConfig, TokenizerName, TrainConfig, load_config
from src.data.dataset import TokenDataError
from src.data.tokenizer import TokenizerError, load_tokenizer
from src.model.checkpoint import CheckpointError, export_model
from src.exit_codes import ExitCode
from src.pipeline.stage import PrerequisiteError, missing_input, run_stage, stage_arguments
from src.training.allocator import keep_freed_memory
from src.training.distributed import Workers, join, leave, single_process
from src.training.threads import SharedCores
from src.training.trainer import (TrainingDiverged, TrainingResult, TrainingState, Timings, epoch_rows,
                                  history_with_seconds, train)

log = logging.getLogger(__name__)

FRESH_ENV = "TT_TRAIN_FRESH"


def run_train(model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer_name: TokenizerName, *, fresh: bool = False,
              tokens_dir: Path = paths.TOKENS_DIR, checkpoint_dir: Path = paths.CHECKPOINT_DIR,
              periodic_dir: Path = paths.PERIODIC_DIR, workers: Workers = single_process()) -> TrainingResult:
    tokenizer_file = tokenizer_name.model
    for needed in (tokenizer_file, tokens_dir / "train.bin", tokens_dir / "validation.bin", tokens_dir / "meta.json"):
        if not needed.is_file():
            raise missing_input(needed, "tokenize")
    # A single CPU process shares the cores with the trainings running beside it (DDP workers get torchrun's).
    cores = SharedCores(train_cfg.threads) if workers.world_size == 1 and workers.device.type == "cpu" else None

    def evaluated(state: TrainingState, timings: Timings) -> None:
        write_plots(state, timings)
        if cores is not None:
            cores.rebalance()

    try:
        vocab_size = load_tokenizer(tokenizer_file).get_piece_size()
        with cores or contextlib.nullcontext():
            result = train(model_cfg, train_cfg, vocab_size=vocab_size, tokens_dir=tokens_dir,
                           tokenizer_file=tokenizer_file, checkpoint_dir=checkpoint_dir, periodic_dir=periodic_dir,
                           fresh=fresh, workers=workers, on_evaluation=evaluated)
    except (TokenDataError, TokenizerError) as exc:
        raise PrerequisiteError(str(exc)) from None
    if workers.is_main:
        write_outputs(result)
    return result


def write_outputs(result: TrainingResult) -> None:
    """Best and final models beside the checkpoints, and the metrics DVC and the seed's tools read.

    metrics/train.json holds what the run computed and what it ran on (``train.*`` in `dvc exp show`): two runs
    of one commit on one machine write it identically. How long they took goes to metrics/train_speed.json
    (``train_speed.*``: training seconds, and apart from them the seconds spent evaluating and checkpointing). data/training_metrics.json is the quickstart's form (``epoch_history``, a row per epoch,
    and ``final_metrics``) with every evaluation besides (``history``).
    """
    export_model(result.best_checkpoint, paths.BEST_MODEL)
    export_model(result.last_checkpoint, paths.FINAL_MODEL)
    state, timings = result.state, result.timings
    history = state.history
    last = history[-1]
    total_seconds = timings.seconds
    tokens_per_sec = sum(t["tokens_per_sec"] * t["seconds"] for t in timings.rows) / total_seconds
    best = next(row for row in history if row["step"] == state.best_step)
    rows = [{**row, "tokens_per_sec": t["tokens_per_sec"]}
            for row, t in zip(history_with_seconds(history, timings.rows), timings.rows)]
    epochs = epoch_rows(rows)
    results = {
        "epochs": state.epoch if state.step % result.steps_per_epoch == 0 else round(last["epoch"], 6),
        "steps": state.step,
        "final_train_loss": (epochs[-1] if epochs and epochs[-1]["step"] == state.step else last)["train_loss"],
        "final_validation_loss": last["validation_loss"],
        "best_validation_loss": state.best_validation_loss,
        "best_epoch": best["epoch"],
        "best_step": state.best_step,
        "best_validation_bits_per_byte": best["validation_bits_per_byte"],
        "final_validation_bits_per_byte": last["validation_bits_per_byte"],
        "best_bits_per_byte_by_language": best["validation_bits_per_byte_by_language"],
        "parameters": result.parameters,
    }
    speed = {"seconds": total_seconds, "tokens_per_sec": tokens_per_sec,
             "evaluation_seconds": timings.evaluation_seconds, "checkpoint_seconds": timings.checkpoint_seconds}
    write_json(paths.TRAINING_METRICS, {"epoch_history": epochs, "history": rows,
                                        "final_metrics": {**results, "total_training_time": total_seconds,
                                                          "tokens_per_sec": tokens_per_sec},
                                        "environment": result.environment})
    write_json(paths.TRAIN_METRICS, {"train": {**rounded(results), "environment": result.environment}})
    write_json(paths.TRAIN_SPEED, {"train_speed": rounded(speed)})
    write_plots(state, timings)
    log.info("done: %s epochs (%d steps), best validation loss %.4f (step %d), final %.4f, %.0f s, %.0f tokens/s",
             results["epochs"], state.step, state.best_validation_loss, state.best_step, last["validation_loss"],
             total_seconds, tokens_per_sec)


def write_plots(state: TrainingState, timings: Timings) -> None:
    """The data of `dvc plots`, rewritten whole (atomically) after every evaluation, so the plots show a run while
    it trains: metrics/train_history.json, the training loss and learning rate every train.log_every_steps steps,
    and metrics/eval_history.json, each evaluation."""
    write_json(paths.TRAIN_PLOT, [{**{key: row[key] for key in LOG_KEYS}, "seconds": seconds}
                                  for row, seconds in zip(state.log, timings.log_seconds)])
    write_json(paths.EVAL_PLOT, [{key: row[key] for key in EVAL_KEYS}
                                 for row in history_with_seconds(state.history, timings.rows)])


LOG_KEYS = ("step", "epoch", "tokens", "train_loss", "learning_rate")
EVAL_KEYS = ("step", "epoch", "tokens", "seconds", "validation_loss", "validation_bits_per_byte")


def rounded(values: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v
            for k, v in values.items()}


MASTER_ENV, NODE_RANK_ENV = "TT_MASTER", "TT_NODE_RANK"


def torchrun_arguments(cfg: TrainConfig, environ: Mapping[str, str]) -> list[str]:
    """How torchrun starts this machine's workers: alone (``--standalone``), or as machine TT_NODE_RANK of
    ``train.nnodes`` meeting at TT_MASTER=host:port (a static rendezvous: each machine's ranks are fixed, so two
    runs of one topology compute the same)."""
    if cfg.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={cfg.nproc}"]
    master, rank = environ.get(MASTER_ENV, ""), environ.get(NODE_RANK_ENV, "")
    host, _, port = master.rpartition(":")
    if not host or not port.isdigit() or not rank.isdigit() or int(rank) >= cfg.nnodes:
        raise PrerequisiteError(f"'train.nnodes' = {cfg.nnodes}: set {MASTER_ENV}=host:port (machine 0's address and "
                                f"a free port) and {NODE_RANK_ENV}=0..{cfg.nnodes - 1} (0 on the machine that runs "
                                f"`dvc repro`) on every machine, got {MASTER_ENV}={master!r} {NODE_RANK_ENV}={rank!r}")
    return [f"--nnodes={cfg.nnodes}", f"--node_rank={rank}", f"--nproc_per_node={cfg.nproc}",
            f"--master_addr={host.strip('[]')}", f"--master_port={port}"]


def launch_workers(cfg: TrainConfig, argv: list[str]) -> None:
    """Run this stage in this machine's worker processes through torchrun; exit with a failed worker's code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch = torchrun_arguments(cfg, os.environ)
    log.info("launching %d workers through torchrun (%s)", cfg.nproc, " ".join(launch))
    try:
        run(get_args_parser().parse_args([*launch, "--module", "src.pipeline.train", *argv]))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values() if failure.exitcode > 0]
        sys.exit(codes[0] if codes else ExitCode.TRAINING)
    sys.exit(ExitCode.OK)


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        keep_freed_memory()
        if cfg.train.workers > 1 and "WORLD_SIZE" not in os.environ:
            launch_workers(cfg.train, ["--params", str(args.params)])
        workers = join(cfg.train.device)
        if not workers.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # one worker speaks for all
        try:
            run_train(cfg.model, cfg.train, cfg.tokenizer_name, fresh=os.environ.get(FRESH_ENV) == "1", workers=workers)
        finally:
            leave()

    run_stage("train", body, expected=(TrainingDiverged, CheckpointError))


if __name__ == "__main__":
    main()
