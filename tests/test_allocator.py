"""The training process's allocator setting, measured in fresh processes (it changes the whole process)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Two hundred 1 MB blocks alive at once, then freed together, as a training step's activations are. glibc's
# defaults hand free memory at the top of the heap back to the kernel beyond a threshold that adjusts itself
# up to 64 MB at most, so the next step must fault the rest in again; with the setting all of it stays.
RETAINED_AFTER_STEP = """
import sys, psutil, torch
from src.training.allocator import keep_freed_memory
kept = sys.argv[1] == "keep" and keep_freed_memory()
def step(): return sum(float(block[0]) for block in [torch.ones(1 << 18) for _ in range(200)])
resident = psutil.Process().memory_info().rss
step()
print(kept, (psutil.Process().memory_info().rss - resident) >> 20)
"""


def retained_mb(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", RETAINED_AFTER_STEP, mode], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    kept, megabytes = done.stdout.split()
    return kept, int(megabytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's")
def test_memory_freed_by_a_step_stays_for_the_next_one():
    kept, kept_mb = retained_mb("keep")
    _, default_mb = retained_mb("default")
    assert kept == "True"
    assert kept_mb >= 180
    assert default_mb <= 80
