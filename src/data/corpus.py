"""The corpus file, the index of which byte range belongs to which book, and the split.

The split is defined here once: the last ``holdout_fraction`` of each book (cut at a line break near that
point, else at a space, else between two characters) is validation text, the rest is training text.
Tokenizer training and model training both use it. The corpus is written a book at a time (``CorpusWriter``)
and read in line-aligned chunks (``line_chunks``), so no step needs all of it in memory; ``corpus`` arguments
are the file's bytes or a read-only ``mmap`` of it (only the pages around a cut are read).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from mmap import mmap
from pathlib import Path
from typing import BinaryIO, Union

from src.atomic import write_json

BOOK_SEPARATOR = "\n\n"
# How far from the exact cut a line break, then a space, is looked for: a book with none that near (a book on
# one line, a text without spaces) is cut between two characters instead.
SEAM_SEARCH_BYTES = 10_000

Corpus = Union[bytes, mmap]  # the corpus file's bytes, or a read-only map of them


@dataclass(frozen=True)
class BookSpan:
    """A book's place in the corpus file: bytes [start, end) of the UTF-8 text."""
    name: str
    language: str
    start: int
    end: int


@dataclass(frozen=True)
class BookSplit:
    name: str
    language: str
    train: tuple[int, int]
    validation: tuple[int, int]


class CorpusWriter:
    """Books written to the corpus one after another, joined by BOOK_SEPARATOR, with a final newline (``finish``)."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.spans: list[BookSpan] = []
        self.size = 0

    def add(self, name: str, language: str, text: bytes) -> BookSpan:
        """Append one book's UTF-8 text; its span."""
        if self.spans:
            self._write(BOOK_SEPARATOR.encode())
        span = BookSpan(name, language, self.size, self.size + len(text))
        self._write(text)
        self.spans.append(span)
        return span

    def finish(self) -> None:
        self._write(b"\n")

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.size += len(data)


def assemble(books: list[tuple[str, str, str]]) -> tuple[bytes, list[BookSpan]]:
    """Join (name, language, text) books into one UTF-8 corpus in memory, as the download stage writes it."""
    buffer = io.BytesIO()
    writer = CorpusWriter(buffer)
    for name, language, text in books:
        writer.add(name, language, text.encode("utf-8"))
    writer.finish()
    return buffer.getvalue(), writer.spans


def write_index(path: Path, spans: list[BookSpan]) -> None:
    write_json(path, {"books": [asdict(s) for s in spans]})


def read_index(path: Path) -> list[BookSpan]:
    return [BookSpan(**book) for book in json.loads(Path(path).read_text(encoding="utf-8"))["books"]]


def seam(corpus: Corpus, start: int, end: int, target: int) -> int:
    """Where the text ``corpus[start:end]`` is cut near byte ``target``: just after the first line break from
    ``target`` on, else the last one before it, within SEAM_SEARCH_BYTES; failing both, after a space found the
    same way; failing that, at the character boundary at or after ``target`` (before it, for the last
    character). Every cut keeps both parts valid UTF-8; a line break keeps sentences whole at the seam."""
    for separator in (b"\n", b" "):
        after = corpus.find(separator, target, min(end, target + SEAM_SEARCH_BYTES))
        if after != -1 and after + 1 < end:
            return after + 1
        before = corpus.rfind(separator, max(start, target - SEAM_SEARCH_BYTES), target)
        if before != -1 and before + 1 > start:
            return before + 1
    cut = target
    while cut < end and corpus[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: inside a character
        cut += 1
    if cut == end:
        cut = target
        while cut > start and corpus[cut] & 0xC0 == 0x80:
            cut -= 1
    return cut


def hold_out_cut(corpus: Corpus, span: BookSpan, holdout_fraction: float) -> int:
    """Where ``span``'s held-out text starts: its ``seam`` near the last ``holdout_fraction`` of it. ValueError when
    the cut leaves a part empty."""
    target = span.start + int((span.end - span.start) * (1.0 - holdout_fraction))
    cut = seam(corpus, span.start, span.end, target)
    if not span.start < cut < span.end:
        raise ValueError(f"book {span.name} is {span.end - span.start} bytes long: too short to hold out "
                         f"{holdout_fraction:.0%} of it and train on the rest")
    return cut


def split_books(corpus: Corpus, spans: list[BookSpan], holdout_fraction: float) -> list[BookSplit]:
    """Hold out the last ``holdout_fraction`` of every book, cut at its ``seam`` (``hold_out_cut``)."""
    splits = []
    for span in spans:
        cut = hold_out_cut(corpus, span, holdout_fraction)
        splits.append(BookSplit(span.name, span.language, (span.start, cut), (cut, span.end)))
    return splits


def part_text(corpus: Corpus, byte_range: tuple[int, int]) -> str:
    start, end = byte_range
    return corpus[start:end].decode("utf-8")


def line_chunks(corpus: Corpus, byte_range: tuple[int, int], limit: int) -> list[tuple[int, int]]:
    """``byte_range`` in consecutive chunks of at most ``limit`` bytes, each but the last ending just after a line
    break (the last line break within ``limit``; a longer line is one chunk of its own). One chunk when the range
    fits: the same cuts for the same corpus on every machine."""
    start, end = byte_range
    chunks = []
    while end - start > limit:
        newline = corpus.rfind(b"\n", start, start + limit)
        if newline == -1:
            newline = corpus.find(b"\n", start + limit, end)
        if newline == -1 or newline + 1 == end:
            break
        chunks.append((start, newline + 1))
        start = newline + 1
    chunks.append((start, end))
    return chunks
