"""The token dataset, written: each split's token ids, book by book, as the flat uint16 files dataset.py reads.

``encode_books`` encodes the books on every core: worker processes each read their stretch of a book's file
themselves (``range_text``) and hand back its ids as uint16 bytes, which go to the files in corpus order as they
come, so neither the corpus nor its ids are ever held whole, and the files are the same whatever the number of
processes.

A book's part is encoded whole when its file's range holds at most CHUNK_BYTES, and otherwise in line-aligned
chunks of at most that (``line_chunks``). Text is encoded line by line (``encode_text``), so the ids of a chunked
part are those of the part whole; the cut is fixed all the same (the same chunks on every machine), not left to
the number of processes.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

from src.atomic import replacing, write_atomic, write_json
from src.data.corpus import BookSplit, TextRange, line_chunks, range_text
from src.data.tokenizer import EOS_ID, HeldOutCount, vocabulary_characters
from src.lib.runtime.encode import encode_text

# src.data.dataset, which defines the files' dtype and meta.json, imports torch: it is imported where the stage
# process needs it, never by the workers, which import this module (so does every process multiprocessing spawns,
# through the stage's module).
if TYPE_CHECKING:
    from src.data.dataset import SplitStats

PARTS = ("train", "validation")
# The most of a book's part one encode call takes: above it, the part is encoded in line-aligned chunks. Every
# book of the default corpus is encoded whole; a worker holds one chunk's text and ids at a time.
CHUNK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Chunk:
    """Whole lines of a book's ``part``, as a range of its file; ``last``: the part ends with it."""
    book: int
    part: str
    text: TextRange
    last: bool


def book_chunks(splits: list[BookSplit], limit: int = CHUNK_BYTES) -> list[Chunk]:
    """Every book's training then held-out part, in chunks of at most ``limit`` bytes of its file (a longer line
    whole): the first keeps the part's ``skip``, the last its ``drop``."""
    chunks = []
    for book, split in enumerate(splits):
        for part in PARTS:
            whole = getattr(split, part)
            with open(whole.file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                ranges = line_chunks(data, (whole.start, whole.end), limit)
            for i, (start, end) in enumerate(ranges):
                last = i == len(ranges) - 1
                text = replace(whole, start=start, end=end, skip=whole.skip if i == 0 else 0,
                               drop=whole.drop if last else 0)
                chunks.append(Chunk(book, part, text, last))
    return chunks


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def encode_books(model_file: Path, splits: list[BookSplit], chunks: list[Chunk], directory: Path, processes: int
                 ) -> list[HeldOutCount]:
    """Encode ``chunks`` with the tokenizer in ``model_file`` in ``processes`` worker processes into
    ``directory``'s train.bin, validation.bin and meta.json (each book's part followed by EOS). Returns each
    book's held-out count, in the order of ``splits``."""
    from src.data.dataset import TOKEN_DTYPE, BookTokens, SplitStats

    vocabulary = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    if vocabulary > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"a vocabulary of {vocabulary} pieces does not fit uint16 token ids")
    tokens = {part: [0] * len(splits) for part in PARTS}
    held_out = [HeldOutCount() for _ in splits]
    end_of_book = np.array([EOS_ID], dtype=TOKEN_DTYPE).tobytes()
    context = multiprocessing.get_context("spawn")  # workers start small, not as copies of this process
    with replacing(directory / "train.bin") as train, replacing(directory / "validation.bin") as validation, \
            train.open("wb") as train_out, validation.open("wb") as validation_out, \
            context.Pool(max(1, min(processes, len(chunks))), _start_worker,
                         (str(model_file), np.dtype(TOKEN_DTYPE).str)) as pool:
        out = {"train": train_out, "validation": validation_out}
        for chunk, (ids, count) in zip(chunks, pool.imap(_encode, chunks)):
            out[chunk.part].write(ids)
            tokens[chunk.part][chunk.book] += len(ids) // np.dtype(TOKEN_DTYPE).itemsize
            if count is not None:
                held_out[chunk.book].add(count)
            if chunk.last:
                out[chunk.part].write(end_of_book)
                tokens[chunk.part][chunk.book] += 1
    meta = {}
    for part in PARTS:
        books = tuple(BookTokens(split.name, split.language, tokens[part][i], getattr(split, f"{part}_bytes"))
                      for i, split in enumerate(splits))
        meta[part] = asdict(SplitStats(sum(b.tokens for b in books), sum(b.bytes for b in books), books))
    write_json(directory / "meta.json", meta)
    return held_out


_worker: dict = {}


def _start_worker(model_file: str, dtype: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the stage, which stops the pool
    processor = spm.SentencePieceProcessor(model_file=model_file)
    _worker.update(processor=processor, covered=vocabulary_characters(processor), dtype=np.dtype(dtype))


def _encode(chunk: Chunk) -> tuple[bytes, HeldOutCount | None]:
    """A chunk's ids as uint16 bytes, and for held-out text its count."""
    text = range_text(chunk.text)
    ids = np.array(encode_text(_worker["processor"], text), dtype=_worker["dtype"])
    count = HeldOutCount.of(text, len(ids), _worker["covered"]) if chunk.part == "validation" else None
    return ids.tobytes(), count


def write_token_dataset(directory: Path, parts: dict[str, tuple[np.ndarray, SplitStats]]) -> None:
    """Token ids already in memory (small datasets), written as ``encode_books`` writes them."""
    for name, (ids, _) in parts.items():
        write_atomic(directory / f"{name}.bin", ids.tobytes())
    meta = {name: asdict(stats) for name, (_, stats) in parts.items()}
    write_json(directory / "meta.json", meta)
