"""Atomic writes and the leftovers of interrupted ones."""

import json
import os
import signal
import subprocess
import sys

from src.atomic import remove_leftovers, write_atomic, write_json
from tests.conftest import REPO_ROOT


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "sub" / "file.json"
    write_json(path, {"a": "ñ"})
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["file.json"]
    write_json(path, {"a": "ñ"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "ñ"} and "ñ" in path.read_text(encoding="utf-8")


def test_a_process_killed_mid_write_leaves_the_old_file_and_a_part_file_that_is_removed_later(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the last good model")
    # The write is killed between writing its temporary file and renaming it (os.replace never runs).
    script = ("import os, signal; from src.atomic import write_atomic; "
              "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
              f"write_atomic(__import__('pathlib').Path({str(path)!r}), b'half a model')")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"the last good model"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".model.pt.")
    assert remove_leftovers(tmp_path) == leftovers and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert remove_leftovers(tmp_path / "missing") == []
    assert os.path.exists(path)
