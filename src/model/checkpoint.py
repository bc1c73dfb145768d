"""Checkpoints: written atomically, loaded with ``weights_only=True``, verified by their content hash.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts), so the safe
``weights_only`` loader can read it, and the sha256 of that content, so a byte changed anywhere
(inside a tensor too, which would otherwise load as a slightly different model) is refused. Its
fingerprint names what produced it (the token data, the tokenizer, the params that shape the run, the
training code) so a run never resumes from a checkpoint of a different recipe. A model is built only
from a recorded shape within the params' own bounds and whose tensors the file actually holds. The models
users load (``load_model``) and those training exports for them (``export_model``) hold finite weights only:
a NaN or an infinity generates empty text without an error. (A training checkpoint may hold them: resuming
from one stops at its first non-finite loss, and says so.)
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from src.atomic import write_atomic
from src.config import ConfigError, ModelConfig, TokenizerConfig, check_field
from src.model.transformer import ModelShape, TinyTransformer
from src.paths import unusable_file

# 2: RoPE pairs channel i with i + head_dim / 2 (format 1: with its neighbour), so the query and key
# weights of a format-1 checkpoint mean something else to this code.
# 3: the content's sha256 is stored beside it.
FORMAT_VERSION = 3
# What save_checkpoint adds to a state: read back, never taken from the caller.
_FORMAT, _CONTENT_SHA256 = "format", "content_sha256"
_ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins


class CheckpointError(RuntimeError):
    pass


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _code_meaning(file: Path) -> bytes:
    """What ``file`` says as code: a Python file's syntax tree without docstrings or positions (so comments,
    docstrings and layout do not count; the dump is that of this Python minor version), any other file's bytes."""
    if file.suffix != ".py":
        return file.read_bytes()
    tree = ast.parse(file.read_bytes(), filename=str(file))
    for node in ast.walk(tree):
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and ast.get_docstring(node, clean=False) is not None):
            node.body = node.body[1:]
    return ast.dump(tree).encode()


def code_digest(*sources: Path) -> str:
    """Hash of what the Python files in ``sources`` (packages or single files) say as code: the code version a
    checkpoint was made with, which an edit of a comment or a docstring keeps. Files are named relative to
    their source's parent, so every clone of the code agrees."""
    digest = hashlib.sha256()
    for source in map(Path, sources):
        for file in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(file.relative_to(source.parent).as_posix().encode() + b"\0" + _code_meaning(file) + b"\0")
    return digest.hexdigest()


def content_sha256(value: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's repr,
    in the order the dicts hold them (torch.save keeps that order)."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}\0".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy())
        elif isinstance(item, dict):
            digest.update(f"dict {len(item)}\0".encode())
            for key, member in item.items():
                feed(key)
                feed(member)
        elif isinstance(item, (list, tuple)):
            digest.update(f"list {len(item)}\0".encode())
            for member in item:
                feed(member)
        else:
            digest.update(f"{type(item).__name__} {item!r}\0".encode())

    feed(value)
    return digest.hexdigest()


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_tensors(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(item) for item in value)
    return isinstance(value, torch.Tensor)


def _canonical(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its plain-data entries rebuilt through one JSON round trip, so equal content pickles to
    equal bytes: pickle writes a repeated string once only when it is one object, which depends on whether
    the value was read back from a checkpoint or made in this process; json.loads makes every repeated key
    one object."""
    plain = {key: value for key, value in state.items() if not _holds_tensors(value)}
    rebuilt = json.loads(json.dumps(plain))
    return {key: rebuilt[key] if key in rebuilt else value for key, value in state.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with its format and content hash, and write it atomically (temporary file, fsync,
    rename). Equal content gives equal bytes; a state read back from a checkpoint may be saved again as it is."""
    content = _canonical({k: v for k, v in state.items() if k not in (_FORMAT, _CONTENT_SHA256)})
    buffer = io.BytesIO()
    torch.save({_FORMAT: FORMAT_VERSION, _CONTENT_SHA256: content_sha256(content), **content}, buffer)
    write_atomic(Path(path), buffer.getvalue())


# What only resuming needs, left out of the models users load (a third of the size, less memory), and the
# timings, which no two runs share: two runs of one recipe on one machine export byte-identical models.
TRAINING_ONLY = ("optimizer", "scheduler", "rng", "timings")


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    problem = unusable_file(path, "train", "checkpoint ")
    if problem:
        raise CheckpointError(problem)
    with path.open("rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise CheckpointError(f"checkpoint {path} cannot be read: it is not a file torch.save wrote, so not a "
                                  f"TinyTransformer checkpoint")
    try:
        # mmap: tensors stay in the page cache until used, so unused optimizer state never becomes resident.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or _FORMAT not in state:
        raise CheckpointError(f"checkpoint {path} is not a TinyTransformer checkpoint")
    if state[_FORMAT] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is of format {state[_FORMAT]!r}; this version reads format "
                              f"{FORMAT_VERSION}: train again (dvc repro train)")
    content = {k: v for k, v in state.items() if k not in (_FORMAT, _CONTENT_SHA256)}
    if state.get(_CONTENT_SHA256) != content_sha256(content):
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match the sha256 it was "
                              f"saved with")
    return state


def _recorded_shape(state: dict[str, Any], path: Path) -> ModelShape:
    """The checkpoint's model shape, held to the params' bounds before anything is allocated for it."""
    recorded = state.get("shape")
    names = [f.name for f in dataclasses.fields(ModelShape)]
    if not isinstance(recorded, dict) or sorted(recorded) != sorted(names):
        raise CheckpointError(f"checkpoint {path} records no model shape (expected the fields {', '.join(names)})")
    try:
        for name, value in recorded.items():
            check_field(TokenizerConfig if name == "vocab_size" else ModelConfig, name, value)
        ModelConfig(**{name: value for name, value in recorded.items() if name != "vocab_size"})
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} records an impossible model shape: {exc}") from None
    return ModelShape(**recorded)


def _check_weights(weights: Any, shape: ModelShape, path: Path) -> None:
    """The checkpoint must hold, in fp32 tensors, as many weights as a model of ``shape`` has: the model is
    only built (and its tensors allocated) once the file is known to hold them. Names and sizes are checked
    by ``load_state_dict`` after."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"checkpoint {path} does not hold the weights of a model")
    storages = {t.untyped_storage().data_ptr(): t for t in weights.values()}  # the tied head is stored once
    held = sum(t.numel() for t in storages.values())
    if held != shape.parameter_count or any(t.dtype != torch.float32 for t in weights.values()):
        raise CheckpointError(f"checkpoint {path} holds {held} weights; the model shape it records has "
                              f"{shape.parameter_count} fp32 weights")


def check_finite(weights: dict[str, torch.Tensor], path: Path) -> None:
    """CheckpointError naming the first tensor of ``weights`` that holds a NaN or an infinity."""
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint {path} holds non-finite weights ({name}): the run that made it "
                                  f"diverged; train again (e.g. with a lower learning_rate)")


def load_model(path: Path) -> tuple[TinyTransformer, dict[str, Any]]:
    """The model of a checkpoint, in eval mode, and the checkpoint's metadata."""
    state = load_checkpoint(path)
    shape = _recorded_shape(state, Path(path))
    _check_weights(state.get("model"), shape, Path(path))
    check_finite(state["model"], Path(path))
    model = TinyTransformer(shape)
    # assign: the model takes the checkpoint's memory-mapped tensors instead of copying them (the
    # initial ones are freed), so the weights are held once and only their pages in use are resident.
    try:
        model.load_state_dict(state["model"], assign=True)
    except RuntimeError as exc:  # missing, unexpected or mis-sized tensors
        raise CheckpointError(f"checkpoint {path} does not fit the model shape it records: "
                              f"{' '.join(str(exc).split())}") from None
    model.tie_weights()
    model.eval()
    return model, {k: v for k, v in state.items() if k not in ("model", *TRAINING_ONLY)}


def export_model(checkpoint: Path, target: Path) -> None:
    """Write ``checkpoint`` without its training-only state: the model a user loads."""
    state = load_checkpoint(checkpoint)
    if isinstance(state.get("model"), dict):
        check_finite(state["model"], Path(checkpoint))
    save_checkpoint(target, {k: v for k, v in state.items() if k not in TRAINING_ONLY})


def set_aside(path: Path, run_folder: Path | None = None) -> Path:
    """Move a checkpoint that must not be used into ``set_aside/`` in ``run_folder`` (else beside it); never delete
    it, nor one set aside before under the same name (``last.pt``, then ``last.1.pt``, ``last.2.pt``, ...)."""
    folder = Path(run_folder if run_folder is not None else path.parent) / "set_aside"
    folder.mkdir(parents=True, exist_ok=True)
    target, earlier = folder / path.name, 0
    while target.exists():
        earlier += 1
        target = folder / f"{path.stem}.{earlier}{path.suffix}"
    os.replace(path, target)
    return target
