"""The training process's allocator setting, measured in fresh processes (it changes the whole process)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# A hundred 1 MB blocks alive at once, freed together, as a training step's activations are. glibc's
# defaults trim free memory at the top of the heap beyond a threshold that adjusts itself up to 64 MB at
# most, so at least 36 of the 100 MB go back to the kernel each time and are faulted in again next step.
STEP_FAULTS = """
import resource, sys, torch
from src.training.allocator import keep_freed_memory
kept = sys.argv[1] == "keep" and keep_freed_memory()
def step(): return sum(float(block[0]) for block in [torch.ones(1 << 18) for _ in range(100)])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5): step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def faults_per_step(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    kept, faults = done.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's")
def test_kept_memory_is_not_faulted_in_again_each_step():
    kept, kept_faults = faults_per_step("keep")
    _, default_faults = faults_per_step("default")
    assert kept == "True"
    assert default_faults > 9_000  # 36 MB of 4 KB pages, each step
    assert kept_faults < default_faults / 4
