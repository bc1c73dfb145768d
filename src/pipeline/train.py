"""Stage `train`: train TinyTransformer on the token dataset, resuming if it can (exit code 4 on failure).

    python -m src.pipeline.train [--params params.yaml]

An interrupted run (Ctrl+C, kill -9, reboot) continues from the newest checkpoint made by the same
data, tokenizer, params and code. Set TT_TRAIN_FRESH=1 to set existing checkpoints aside and start over.

With ``train.nproc`` > 1 the stage launches itself through torchrun (DDP); a worker's exit code is the
stage's. Started by torchrun directly (``torchrun --nproc_per_node=N -m src.pipeline.train``) it works
the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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
from src.training.trainer import TrainingDiverged, TrainingResult, history_with_seconds, train

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

    def evaluated(rows: list[dict]) -> None:
        write_plot(rows)
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
    (``train_speed.*``). data/training_metrics.json is the quickstart's form (``epoch_history``, a row per epoch,
    and ``final_metrics``) with every evaluation besides (``history``).
    """
    export_model(result.best_checkpoint, paths.BEST_MODEL)
    export_model(result.last_checkpoint, paths.FINAL_MODEL)
    state = result.state
    history = state.history
    last = history[-1]
    total_seconds = sum(t["seconds"] for t in result.timings)
    tokens_per_sec = sum(t["tokens_per_sec"] * t["seconds"] for t in result.timings) / total_seconds
    best = next(h for h in history if h["epoch"] == state.best_epoch)
    rows = [{**row, "tokens_per_sec": t["tokens_per_sec"]}
            for row, t in zip(history_with_seconds(history, result.timings), result.timings)]
    epochs = epoch_rows(rows)
    results = {
        "epochs": state.epoch,
        "steps": state.step,
        "final_train_loss": epochs[-1]["train_loss"],
        "final_validation_loss": last["validation_loss"],
        "best_validation_loss": state.best_validation_loss,
        "best_epoch": state.best_epoch,
        "best_validation_bits_per_byte": best["validation_bits_per_byte"],
        "final_validation_bits_per_byte": last["validation_bits_per_byte"],
        "best_bits_per_byte_by_language": best["validation_bits_per_byte_by_language"],
        "parameters": result.parameters,
    }
    speed = {"seconds": total_seconds, "tokens_per_sec": tokens_per_sec}
    write_json(paths.TRAINING_METRICS, {"epoch_history": epochs, "history": rows,
                                        "final_metrics": {**results, "total_training_time": total_seconds,
                                                          "tokens_per_sec": tokens_per_sec},
                                        "environment": result.environment})
    write_json(paths.TRAIN_METRICS, {"train": {**rounded(results), "environment": result.environment}})
    write_json(paths.TRAIN_SPEED, {"train_speed": rounded(speed)})
    write_plot(rows)
    log.info("done: %d epochs, best validation loss %.4f (epoch %d), final %.4f, %.0f s, %.0f tokens/s",
             state.epoch, state.best_validation_loss, state.best_epoch, last["validation_loss"],
             total_seconds, tokens_per_sec)


def epoch_rows(rows: list[dict]) -> list[dict]:
    """A row per epoch: its end's evaluation row, with the epoch's mean training loss (each evaluation's rows
    weighted by the tokens they cover) and its training seconds (``epoch_seconds``)."""
    epochs: list[dict] = []
    loss_sum, tokens, covered_before, seconds_before = 0.0, 0, 0, 0.0
    for row in rows:
        covered = row["tokens"] - covered_before
        loss_sum, tokens, covered_before = loss_sum + row["train_loss"] * covered, tokens + covered, row["tokens"]
        if float(row["epoch"]).is_integer():
            epochs.append({**row, "epoch": int(row["epoch"]), "train_loss": loss_sum / tokens,
                           "epoch_seconds": row["seconds"] - seconds_before})
            loss_sum, tokens, seconds_before = 0.0, 0, row["seconds"]
    return epochs


def write_plot(rows: list[dict]) -> None:
    """metrics/train_history.json, the data of `dvc plots`: rewritten whole (atomically) after every evaluation,
    so the plots show a run while it trains."""
    write_json(paths.TRAIN_PLOT, [{key: row[key] for key in PLOT_KEYS} for row in rows])


PLOT_KEYS = ("step", "epoch", "tokens", "seconds", "train_loss", "validation_loss", "learning_rate")


def rounded(values: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v
            for k, v in values.items()}


def launch_workers(nproc: int, argv: list[str]) -> None:
    """Run this stage in ``nproc`` worker processes through torchrun; exit with a failed worker's code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    log.info("launching %d workers through torchrun", nproc)
    launch = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "--module", "src.pipeline.train", *argv])
    try:
        run(launch)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values() if failure.exitcode > 0]
        sys.exit(codes[0] if codes else ExitCode.TRAINING)
    sys.exit(ExitCode.OK)


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        keep_freed_memory()
        if cfg.train.nproc > 1 and "WORLD_SIZE" not in os.environ:
            launch_workers(cfg.train.nproc, ["--params", str(args.params)])
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
