"""train.threads: 0 shares the cores among the trainings running at once; a number is used as is."""

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from src.training import threads
from src.training.threads import SharedCores


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_fixed_number_of_threads_is_used_and_registers_nothing(tmp_path):
    with SharedCores(1, tmp_path / "running") as shared:
        assert torch.get_num_threads() == 1 and shared.rebalance() == 1
    assert not (tmp_path / "running").exists()


def test_running_trainings_share_the_cores_and_the_gone_ones_do_not_count(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_ALL_THREADS", 4)
    running = tmp_path / "running"
    running.mkdir()
    (running / str(os.getppid())).touch()  # a live neighbour
    (running / "999999999").touch()  # a training that died without removing its entry
    with SharedCores(0, running) as shared:
        assert shared.running() == 2 and torch.get_num_threads() == 2
        (running / str(os.getppid())).unlink()  # the neighbour ends: the next evaluation takes every core
        assert shared.rebalance() == 4 and torch.get_num_threads() == 4
        (running / "1").touch()
        (running / str(os.getppid())).touch()
        assert shared.rebalance() == 1  # 4 cores among three: at least one each
    assert not (running / str(os.getpid())).exists()


def test_a_killed_training_left_a_zombie_does_not_count(tmp_path, monkeypatch):
    """A training killed with SIGKILL is a zombie until it is reaped, which in a container may be never."""
    monkeypatch.setattr(threads, "_ALL_THREADS", 4)
    running = tmp_path / "running"
    running.mkdir()
    zombie = subprocess.Popen(["true"])  # ends at once; not waited for, so a zombie
    deadline = time.monotonic() + 10
    while (Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
           and time.monotonic() < deadline):
        time.sleep(0.01)
    (running / str(zombie.pid)).touch()
    try:
        with SharedCores(0, running) as shared:
            assert shared.running() == 1 and torch.get_num_threads() == 4
    finally:
        zombie.wait()


def test_alone_a_training_keeps_every_core(tmp_path):
    with SharedCores(0, tmp_path / "running"):
        assert torch.get_num_threads() == threads.cores()
