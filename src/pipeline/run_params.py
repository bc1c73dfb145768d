"""The params a ./scripts/train_pipeline.sh run trains with: params.yaml as the user wrote it, and the run's options.

    python -m src.pipeline.run_params prepare [--set KEY=VALUE ...] [--resume]
    python -m src.pipeline.run_params skipped STAGE

`dvc exp run -S` writes a run's options into params.yaml, and DVC keeps them there: the workspace holds the
last experiment, whose outputs it has. The script's runs start from the user's params instead (the
baseline), so that `--epochs 10`, then `--vocab-size 16000`, trains 16000 pieces for the baseline's epochs,
not for 10. ``prepare`` records the baseline and the options it hands to DVC (.dvc/tmp/train_pipeline.json);
while params.yaml still holds exactly those, the next ``prepare`` puts the baseline back first. A params.yaml
edited since is the user's, and becomes the baseline. With ``--resume`` and no option, params.yaml is kept
as it is, so that the run that was interrupted continues with its own options.

``prepare`` prints the `dvc exp run -S` values of the run, a line each: its options, and the ``names.*`` they
call for (src/paths.py: the corpus and tokenizer files are named for what they hold). No line: a plain
`dvc repro`. ``skipped STAGE`` exits 1, naming the file, when an output of a stage before STAGE (which
--skip-corpus or --skip-tokenizer keep) is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from src import paths
from src.atomic import write_atomic, write_json
from src.config import PARAMS_FILE, ConfigError, load_config, parse_yaml
from src.lib.runtime.cli import ArgumentParser
from src.pipeline.check_params import names_overrides, with_overrides
from src.pipeline.stage import PrerequisiteError, run_stage

STATE_FILE = Path(".dvc") / "tmp" / "train_pipeline.json"


def parsed(text: str) -> Any:
    return parse_yaml(text, str(PARAMS_FILE)) or {}


def read_state(state_file: Path) -> dict[str, Any] | None:
    """The baseline and options the last ``prepare`` recorded, or None."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return state if isinstance(state.get("baseline"), str) and isinstance(state.get("overrides"), list) else None
    except (OSError, ValueError, AttributeError):
        return None


def holds_last_run(params_text: str, state: dict[str, Any] | None) -> bool:
    """Does params.yaml hold exactly what the last run applied to its baseline (nobody edited it since)?"""
    if state is None:
        return False
    try:
        return parsed(params_text) == with_overrides(parsed(state["baseline"]), state["overrides"])
    except ConfigError:
        return False


def prepare(options: list[str], resume: bool, *, params_file: Path = PARAMS_FILE,
            state_file: Path = STATE_FILE) -> list[str]:
    """Put the baseline back where params.yaml holds the last run's options; return this run's -S values."""
    text = params_file.read_text(encoding="utf-8")
    state = read_state(state_file)
    last_run = holds_last_run(text, state)
    if resume and not options:
        return state["overrides"] if last_run else []
    baseline = state["baseline"] if last_run else text
    if last_run and text != baseline:
        write_atomic(params_file, baseline.encode("utf-8"))
    overrides = options + names_overrides(params_file, options)
    write_json(state_file, {"baseline": baseline, "overrides": overrides})
    return overrides


def check_skipped(stage: str, params_file: Path = PARAMS_FILE) -> None:
    """PrerequisiteError naming the first output of the stages before ``stage`` that is missing."""
    cfg = load_config(params_file)
    needed = [cfg.corpus_name.file, paths.CORPUS_INDEX_FILE]
    if stage == "train":
        needed += [cfg.tokenizer_name.model, *(paths.TOKENS_DIR / name
                                                for name in ("train.bin", "validation.bin", "meta.json"))]
    for path in needed:
        if not path.is_file():
            raise PrerequisiteError(f"{path} is missing, so it cannot be skipped: run without --skip-corpus and "
                                    f"--skip-tokenizer first")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    make = commands.add_parser("prepare", help="params.yaml for this run; print its -S values")
    make.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE")
    make.add_argument("--resume", action="store_true", help="keep an interrupted run's options")
    skip = commands.add_parser("skipped", help="check that what --skip-* keeps is there")
    skip.add_argument("stage", choices=("tokenize", "train"))
    args = parser.parse_args()

    def body() -> None:
        if args.command == "prepare":
            for override in prepare(args.options, args.resume):
                print(override)
        else:
            check_skipped(args.stage)

    run_stage("check_params", body)


if __name__ == "__main__":
    main()
