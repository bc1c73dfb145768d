"""Checkpoints: written atomically, loaded with ``weights_only=True``, stamped with a fingerprint.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts), so the safe
``weights_only`` loader can read it. The fingerprint names what produced it (the token data, the
tokenizer, the params that shape the run, the training code) so a run never resumes from a
checkpoint of a different recipe.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from src.data.corpus import write_atomic
from src.model.transformer import ModelShape, TinyTransformer

# 2: RoPE pairs channel i with i + head_dim / 2 (format 1: with its neighbour), so the query and key
# weights of a format-1 checkpoint mean something else to this code.
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    pass


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def code_digest(*sources: Path) -> str:
    """Hash of the Python files in ``sources`` (packages or single files): the code version a checkpoint was
    made with. Files are named relative to their source's parent, so every clone of the code agrees."""
    digest = hashlib.sha256()
    for source in map(Path, sources):
        for file in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(file.relative_to(source.parent).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` and write it atomically (temporary file, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    write_atomic(Path(path), buffer.getvalue())


# What only resuming needs: left out of the models users load (a third of the size, less memory).
TRAINING_ONLY = ("optimizer", "scheduler", "rng")


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run `dvc repro train` first")
    try:
        # mmap: tensors stay in the page cache until used, so unused optimizer state never becomes resident.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} is not a TinyTransformer checkpoint")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is of format {state['format']}; this version reads format "
                              f"{FORMAT_VERSION}: train again (dvc repro train)")
    return state


def load_model(path: Path) -> tuple[TinyTransformer, dict[str, Any]]:
    """The model of a checkpoint, in eval mode, and the checkpoint's metadata."""
    state = load_checkpoint(path)
    model = TinyTransformer(ModelShape(**state["shape"]))
    # assign: the model takes the checkpoint's memory-mapped tensors instead of copying them (the
    # initial ones are freed), so the weights are held once and only their pages in use are resident.
    model.load_state_dict(state["model"], assign=True)
    model.tie_weights()
    model.eval()
    return model, {k: v for k, v in state.items() if k not in ("model", *TRAINING_ONLY)}


def export_model(checkpoint: Path, target: Path) -> None:
    """Write ``checkpoint`` without its training-only state: the model a user loads."""
    state = load_checkpoint(checkpoint)
    save_checkpoint(target, {k: v for k, v in state.items() if k not in ("format", *TRAINING_ONLY)})


def set_aside(path: Path) -> Path:
    """Move a checkpoint that must not be used into ``set_aside/`` beside it; never delete it, nor one set
    aside before under the same name (``last.pt``, then ``last.1.pt``, ``last.2.pt``, ...)."""
    folder = path.parent / "set_aside"
    folder.mkdir(parents=True, exist_ok=True)
    target, earlier = folder / path.name, 0
    while target.exists():
        earlier += 1
        target = folder / f"{path.stem}.{earlier}{path.suffix}"
    os.replace(path, target)
    return target
