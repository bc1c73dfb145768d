"""What every stage entry point shares: exit codes, logging, signals, and turning errors into messages."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn

from src.config import PARAMS_FILE, ConfigError
from src.exit_codes import STAGE_FAILURE, ExitCode
from src.paths import not_found


class PrerequisiteError(RuntimeError):
    """Something the stage needs before it can start is missing (exit code 1)."""


class StageError(RuntimeError):
    """The stage's own work failed; the message says why and what to do (the stage's exit code)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl+C does, so that temporary files are removed on the way out."""


def missing_input(path: Path, stage: str) -> PrerequisiteError:
    """The error for an earlier stage's output that is not there."""
    return PrerequisiteError(not_found(path, stage))


def require_free_disk(path: Path, min_free_gb: float) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < min_free_gb:
        raise PrerequisiteError(
            f"only {free_gb:.2f} GB free under {path.resolve()}, the pipeline asks for {min_free_gb:g} GB "
            f"(corpus.min_free_disk_gb); free some space and run again")


def stage_arguments(description: str | None) -> argparse.Namespace:
    """The command line every stage takes: ``--params FILE``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE, type=Path, help="the params file (default params.yaml)")
    return parser.parse_args()


def _level_prefix(record: logging.LogRecord) -> bool:
    """A warning or an error says so ("train: warning: ..."); information goes as it is."""
    record.levelprefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
    return True


def _terminate(signum: int, frame) -> None:
    raise Terminated()


def _fail(name: str, message: object, code: int) -> NoReturn:
    print(f"{name}: error: {message}", file=sys.stderr)
    hint = _restore_hint()
    if hint:
        print(f"{name}: {hint}", file=sys.stderr)
    sys.exit(code)


def _restore_hint() -> str | None:
    """Under `dvc repro`, how to put back the outputs DVC removed before this failed run (None: nothing to)."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return None
    from src.pipeline.restore import lost_outputs  # imports DVC: only on this failure path

    try:
        lost = lost_outputs(stage, os.environ.get("DVC_ROOT", "."))
    except Exception:  # the hint is a courtesy: never let it hide the error above
        return None
    if not lost:
        return None
    return (f"DVC removed this stage's earlier outputs before running it ({', '.join(lost)}); "
            f"`python -m src.pipeline.restore {stage}` puts back the ones dvc.lock records")


def _keep_uncached_outputs() -> None:
    """Under DVC, once the stage has succeeded: its ``cache: false`` outputs into DVC's cache, where
    ``python -m src.pipeline.restore`` finds them after a later run fails (src/pipeline/restore.py). One
    process of a torchrun launch, its rank 0, speaks for all."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or os.environ.get("RANK", "0") != "0":
        return
    from src.pipeline.restore import keep_uncached_outputs  # imports DVC: only under DVC

    try:
        keep_uncached_outputs(stage, os.environ.get("DVC_ROOT", "."))
    except Exception as exc:  # the stage's work is done: a cache DVC cannot write costs only the later restore
        logging.getLogger(__name__).warning("its metrics could not be kept in DVC's cache for a later restore (%s)",
                                            " ".join(str(exc).split()) or type(exc).__name__)


def run_stage(name: str, body: Callable[[], None], expected: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """Run a stage body and exit with the documented code.

    Bad params and missing prerequisites exit 1; the ``expected`` failures and StageError print
    their message and exit the stage's code (``STAGE_FAILURE``); anything else prints its traceback too. SIGTERM and
    Ctrl+C unwind the stage (its temporary files are removed) and exit 143 and 130. A stage that succeeds under
    DVC keeps its ``cache: false`` outputs where a restore finds them (``_keep_uncached_outputs``).
    """
    failure_code = STAGE_FAILURE[name]
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(levelprefix)s%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_level_prefix)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        body()
    except (ConfigError, PrerequisiteError) as exc:
        _fail(name, exc, ExitCode.PREREQUISITES)
    except (StageError, *expected) as exc:
        _fail(name, exc, failure_code)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        sys.exit(ExitCode.TERMINATED)
    except Exception:
        traceback.print_exc()
        _fail(name, "failed unexpectedly (see the traceback above)", failure_code)
    _keep_uncached_outputs()
    sys.exit(ExitCode.OK)
