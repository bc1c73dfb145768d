"""The model bundle: the one directory a device needs, every file in it listed in its manifest.

    model.safetensors        the weights, fp32, under Hugging Face's Starcoder2 names; the tied output head
                             stored once (as the embedding)
    config.json              everything that rebuilds the forward pass: the runtime's fields and, derived from
                             them, Hugging Face's (src/lib/runtime/hf_format.py)
    tokenizer.model          the sentencepiece model (what the runtime tokenizes with)
    tokenizer.json           the same tokenizer for Hugging Face `tokenizers`, with
    tokenizer_config.json    its class and special tokens, and
    special_tokens_map.json  the special tokens again, as older `transformers` read them
    generation_config.json   the default sampling (temperature, top_k, top_p) and the special token ids
    metrics.json             what training measured, and the budgets the pipeline holds the model to
    provenance.json          the books, their licence, the commit, the pipeline's hashes, the checkpoint's fingerprint
    README.md                the model card, with the Hugging Face Hub's metadata
    manifest.json            the format version, and the sha256 and size of every file above

So the directory is also a Hugging Face model directory: ``from_pretrained`` loads it as it is, offline.

No file is pickled. A bundle is read only through ``read_bundle``, which reads each file once, checks it
against the manifest, and refuses (BundleError, naming the file) a changed byte, a missing or extra file,
a manifest that is not exactly this format, or a safetensors header that lies about its size or asks for
more than the file holds, before any of it is used.

``write_bundle`` replaces only what is recognisably a bundle: nothing, an empty directory, or a directory
holding a bundle's manifest and the files it lists, nothing else. A file, a symbolic link or a directory
with anything else in it is refused, never renamed aside nor deleted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2  # 2: the Hugging Face layout (1: PyTorch tensor names, generation.json, no tokenizer.json)
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.model"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SPECIAL_TOKENS = "special_tokens_map.json"
GENERATION = "generation_config.json"
METRICS = "metrics.json"
PROVENANCE = "provenance.json"
MODEL_CARD = "README.md"
FILES = (WEIGHTS, CONFIG, TOKENIZER, HF_TOKENIZER, HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS, GENERATION, METRICS,
         PROVENANCE, MODEL_CARD)
MAX_HEADER_BYTES = 1 << 20  # a safetensors header or a manifest is a few kB; more is refused before it is read
_DTYPE_BYTES = {"F32": 4}


class BundleError(Exception):
    """The directory is not a bundle this runtime can use; the message names the file."""


@dataclass(frozen=True)
class BundleFiles:
    """A verified bundle's contents, each file read once, and the tensors its weights file declares."""
    directory: Path
    files: dict[str, bytes]
    tensors: dict[str, dict[str, Any]]  # name -> the safetensors header's dtype, shape and data_offsets

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.files[name])
        except ValueError as exc:  # checked against the manifest, yet not JSON: made wrong, not damaged
            raise BundleError(f"{self.directory / name}: not valid JSON ({exc})") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(files: dict[str, bytes]) -> dict[str, Any]:
    return {"format": FORMAT_VERSION,
            "files": {name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in sorted(files.items())}}


def replaceable(directory: Path | str) -> Path:
    """``directory`` as an absolute path, when a bundle may be written as it: nothing is there, or an empty
    directory, or a bundle (a manifest of this runtime's form, and only the files it lists); else BundleError
    saying what is there."""
    given = Path(directory)
    try:
        if given.is_symlink():
            raise BundleError(f"{given} is a symbolic link: give the directory itself as the bundle's place")
        target = given.resolve()
        if not target.name:
            raise BundleError(f"{given} is the file system's root: a bundle needs a directory of its own")
        if not target.exists():
            return target
        if not target.is_dir():
            raise BundleError(f"{given} is a file, not a bundle: a bundle replaces only an earlier bundle")
        entries = sorted(p.name for p in target.iterdir())
    except OSError as exc:
        raise BundleError(f"{given} cannot be used as a bundle's place ({exc.strerror or exc})") from None
    if entries:
        listed = _earlier_bundles_files(target)
        if listed is None:
            raise BundleError(f"{given} holds files that are not a bundle's ({', '.join(entries[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}): a bundle replaces only an earlier bundle or "
                              f"an empty directory")
        others = [name for name in entries if name not in (*listed, MANIFEST)]
        if others:
            raise BundleError(f"{given} is a bundle with other files in it ({', '.join(others[:3])}): move them "
                              f"out first, writing the bundle again would delete them")
    return target


def _earlier_bundles_files(directory: Path) -> list[str] | None:
    """The files the manifest in ``directory`` lists, when it is a manifest of this runtime's format or of an
    earlier one (a bundle an older version wrote is replaced like any other); None when there is none."""
    try:
        if (directory / MANIFEST).stat().st_size > MAX_HEADER_BYTES:
            return None
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or sorted(manifest) != ["files", "format"]:
        return None
    version, listed = manifest["format"], manifest["files"]
    if (not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION
            or not isinstance(listed, dict) or not all(isinstance(name, str) for name in listed)):
        return None
    return list(listed)


def write_bundle(directory: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (exactly FILES) and their manifest as ``directory``, replacing it whole when it is
    ``replaceable`` (BundleError, with nothing changed, when it is not).

    The bundle is made in a temporary directory beside the target and renamed into place, so a reader
    never sees half of one."""
    if sorted(files) != sorted(FILES):
        raise ValueError(f"a bundle holds exactly {', '.join(FILES)}")
    directory = replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = directory.with_name(f".{directory.name}.{os.getpid()}.part")
    replaced = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        for name, data in {**files, MANIFEST: (json.dumps(manifest_for(files), indent=2) + "\n").encode()}.items():
            with (building / name).open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if directory.exists():
            os.replace(directory, replaced)
        os.replace(building, directory)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)


def _read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / MANIFEST
    build = "build a bundle with `python -m src.lib.runtime create_bundle` (or `dvc repro bundle`)"
    try:
        if not directory.exists():
            raise BundleError(f"{directory} not found: {build}")
        if not directory.is_dir():
            raise BundleError(f"{directory} is not a directory: {build}")
        if not path.is_file():
            raise BundleError(f"{path} not found: {directory} is not a bundle")
        if path.stat().st_size > MAX_HEADER_BYTES:
            raise BundleError(f"{path}: more than {MAX_HEADER_BYTES} bytes; a manifest lists {len(FILES)} files")
        text = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{directory} cannot be read as a bundle ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or sorted(manifest) != ["files", "format"]:
        raise BundleError(f"{path}: expected exactly the keys 'format' and 'files'")
    if manifest["format"] != FORMAT_VERSION:
        raise BundleError(f"{path}: format {manifest['format']!r}; this runtime reads format {FORMAT_VERSION}")
    listed = manifest["files"]
    if not isinstance(listed, dict) or sorted(listed) != sorted(FILES):
        raise BundleError(f"{path}: must list exactly {', '.join(FILES)}")
    for name, entry in listed.items():
        if (not isinstance(entry, dict) or sorted(entry) != ["sha256", "size"] or not isinstance(entry["sha256"], str)
                or not isinstance(entry["size"], int) or isinstance(entry["size"], bool) or entry["size"] < 0):
            raise BundleError(f"{path}: the entry of {name} must be {{\"sha256\": hex, \"size\": bytes}}")
    return listed


def read_bundle(directory: Path) -> BundleFiles:
    """Every file of the bundle in ``directory``, read once and checked against the manifest."""
    directory = Path(directory)
    try:
        return _read_files(directory, _read_manifest(directory))
    except OSError as exc:  # a file that cannot be opened: permissions, a special file, a name too long
        where = exc.filename or directory
        raise BundleError(f"{where} cannot be read ({exc.strerror or exc})") from None


def _read_files(directory: Path, listed: dict[str, dict[str, Any]]) -> BundleFiles:
    extra = sorted(p.name for p in directory.iterdir() if p.name not in (*FILES, MANIFEST))
    if extra:
        raise BundleError(f"{directory / extra[0]}: not part of the bundle (the manifest lists "
                          f"{', '.join(FILES)})")
    files: dict[str, bytes] = {}
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing")
        if path.stat().st_size != listed[name]["size"]:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, the manifest says {listed[name]['size']}")
        data = path.read_bytes()
        if sha256_hex(data) != listed[name]["sha256"]:
            raise BundleError(f"{path}: its sha256 is not the manifest's: the file was changed")
        files[name] = data
    tensors = check_safetensors_header(files[WEIGHTS], directory / WEIGHTS)
    return BundleFiles(directory, files, tensors)


def check_safetensors_header(data: bytes, path: Path) -> dict[str, Any]:
    """The tensors a safetensors file declares, refused unless its header is honest: within the file, at
    most MAX_HEADER_BYTES, fp32 tensors whose byte ranges hold exactly their shapes and tile the data."""
    if len(data) < 8:
        raise BundleError(f"{path}: too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > MAX_HEADER_BYTES or 8 + header_size > len(data):
        raise BundleError(f"{path}: its header claims {header_size} bytes, more than the file or the "
                          f"{MAX_HEADER_BYTES}-byte limit allow")
    try:
        header = json.loads(data[8:8 + header_size])
    except ValueError:
        raise BundleError(f"{path}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: its header is not a mapping of tensors")
    tensors = {name: spec for name, spec in header.items() if name != "__metadata__"}
    data_size, ranges = len(data) - 8 - header_size, []
    for name, spec in tensors.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        if (spec.get("dtype") not in _DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list)
                or len(offsets) != 2 or not all(isinstance(n, int) and n >= 0 for n in shape + offsets)):
            raise BundleError(f"{path}: tensor {name!r} is not an fp32 tensor with a shape and data offsets")
        start, end = offsets
        if not start <= end <= data_size or end - start != math.prod(shape) * _DTYPE_BYTES[spec["dtype"]]:
            raise BundleError(f"{path}: tensor {name!r} claims bytes {start}-{end} for shape {shape}, "
                              f"which the file's {data_size} data bytes do not hold")
        ranges.append((start, end))
    position = 0
    for start, end in sorted(ranges):
        if start != position:
            raise BundleError(f"{path}: its tensors overlap or leave gaps")
        position = end
    if position != data_size:
        raise BundleError(f"{path}: {data_size - position} bytes after the last tensor")
    return tensors
