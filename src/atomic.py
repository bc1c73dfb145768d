"""Atomic file writes, the project's JSON files, and the leftovers of writes that a crash interrupted.

A file is written to a temporary ``.<name>.<pid>.part`` beside it, flushed to disk, then renamed over
the target: a reader sees the old file or the new one, never half of one. A process killed mid-write
(SIGKILL, a power cut) leaves its ``.part`` file behind; ``remove_leftovers`` clears them, and
``.gitignore`` / ``.dvcignore`` keep them out of git and out of DVC's outputs meanwhile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PART_SUFFIX = ".part"


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (as often as it likes); when the block ends
    without an error, the file there is fsynced and renamed over ``path``, otherwise deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    try:
        yield part
        with part.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    with replacing(path) as part:
        part.write_bytes(data)


def json_bytes(value: Any) -> bytes:
    """The form of every JSON file the project writes: indented UTF-8 (non-ASCII kept as written), a final
    newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(path: Path, value: Any) -> None:
    """``value`` as a JSON file (``json_bytes``), atomically."""
    write_atomic(path, json_bytes(value))


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left directly in ``directory``; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    leftovers = [p for p in directory.glob(f".*{PART_SUFFIX}") if p.is_file()]
    for part in leftovers:
        part.unlink(missing_ok=True)
    return leftovers
