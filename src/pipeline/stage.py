"""What every stage entry point shares: exit codes, logging, and turning errors into messages."""

from __future__ import annotations

import enum
import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn

from src.config import ConfigError


class ExitCode(enum.IntEnum):
    OK = 0
    PREREQUISITES = 1  # bad params, missing inputs, not enough disk
    CORPUS = 2
    TOKENIZER = 3
    TRAINING = 4
    VALIDATION = 5


class PrerequisiteError(RuntimeError):
    """Something the stage needs before it can start is missing (exit code 1)."""


class StageError(RuntimeError):
    """The stage's own work failed; the message says why and what to do (the stage's exit code)."""


def require_free_disk(path: Path, min_free_gb: float) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < min_free_gb:
        raise PrerequisiteError(
            f"only {free_gb:.2f} GB free under {path.resolve()}, the pipeline asks for {min_free_gb:g} GB "
            f"(corpus.min_free_disk_gb); free some space and run again")


def run_stage(name: str, body: Callable[[], None], failure_code: ExitCode,
              expected: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """Run a stage body and exit with the documented code.

    Bad params and missing prerequisites exit 1; the ``expected`` failures and StageError print
    their message and exit ``failure_code``; anything else prints its traceback too.
    """
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s", stream=sys.stderr)
    try:
        body()
    except (ConfigError, PrerequisiteError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.PREREQUISITES)
    except (StageError, *expected) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(failure_code)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        print(f"{name}: failed unexpectedly (see the traceback above)", file=sys.stderr)
        sys.exit(failure_code)
    sys.exit(ExitCode.OK)
