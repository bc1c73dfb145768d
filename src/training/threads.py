"""How many threads a training uses: train.threads, or (0) the machine's cores shared by the trainings running.

`dvc queue start -j N` runs N experiments at once, and each PyTorch would start a pool of a thread per core:
N pools spinning on the same cores make every training several times slower than N / cores. So each
training registers in a directory of running trainings (``TT_CACHE_DIR``/running, one file per process,
named by its PID; a file whose process is gone, or a zombie, does not count) and takes cores // trainings threads, at
least one. It looks again at every evaluation (``SharedCores.rebalance``), so when a neighbour starts or
ends the shares follow. The thread count changes a run's last bits (docs/REPRODUCIBILITY.md), and the
metrics record it; a training alone on the machine always has every core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from src.training.speed_choices import cache_dir

log = logging.getLogger(__name__)


# What PyTorch takes by itself (the physical cores, or OMP_NUM_THREADS), read before this module changes it.
_ALL_THREADS = torch.get_num_threads()


def cores() -> int:
    return _ALL_THREADS


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie. A training killed with SIGKILL stays a zombie
    until its parent, or init, reaps it, and in a container init often never does: counting it would halve
    the threads of every later training (and change their last bits)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return not Path("/proc").is_dir()  # no /proc (not Linux): os.kill's answer; else it has just ended
    return state not in ("Z", "X")


class SharedCores:
    """This process's entry among the running trainings, and its share of the cores."""

    def __init__(self, fixed_threads: int, directory: Path | None = None):
        self.fixed = fixed_threads
        self.directory = directory or cache_dir() / "running"
        self.entry = self.directory / str(os.getpid())

    def __enter__(self) -> "SharedCores":
        if not self.fixed:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.entry.touch()
            except OSError as exc:
                log.warning("cannot register in %s (%s): this training takes every core", self.directory, exc)
        self.rebalance()
        return self

    def __exit__(self, *exc_info) -> None:
        self.entry.unlink(missing_ok=True)

    def running(self) -> int:
        try:
            pids = [int(name) for name in os.listdir(self.directory) if name.isdigit()]
        except OSError:
            return 1
        return max(sum(_alive(pid) for pid in pids), 1)

    def rebalance(self) -> int:
        """Set and return this training's threads: the fixed number, or its share of the cores now."""
        threads = self.fixed or max(cores() // self.running(), 1)
        if threads != torch.get_num_threads():
            log.info("%d threads (%s)", threads, "train.threads" if self.fixed else
                     f"{cores()} cores shared by {self.running()} running trainings")
            torch.set_num_threads(threads)
        return threads
