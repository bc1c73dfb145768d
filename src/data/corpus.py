"""The bilingual corpus file, the index of which byte range belongs to which book, and the split.

The split is defined here once: the last ``holdout_fraction`` of each book (cut at a line break)
is validation text, the rest is training text. Tokenizer training and model training both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from src.atomic import write_json

BOOK_SEPARATOR = "\n\n"


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


def assemble(books: list[tuple[str, str, str]]) -> tuple[bytes, list[BookSpan]]:
    """Join (name, language, text) books into one UTF-8 corpus and the spans of each book."""
    parts: list[bytes] = []
    spans: list[BookSpan] = []
    offset = 0
    separator = BOOK_SEPARATOR.encode()
    for i, (name, language, text) in enumerate(books):
        if i:
            parts.append(separator)
            offset += len(separator)
        encoded = text.encode("utf-8")
        spans.append(BookSpan(name, language, offset, offset + len(encoded)))
        parts.append(encoded)
        offset += len(encoded)
    parts.append(b"\n")
    return b"".join(parts), spans


def write_index(path: Path, spans: list[BookSpan]) -> None:
    write_json(path, {"books": [asdict(s) for s in spans]})


def read_index(path: Path) -> list[BookSpan]:
    return [BookSpan(**book) for book in json.loads(Path(path).read_text(encoding="utf-8"))["books"]]


def split_books(corpus: bytes, spans: list[BookSpan], holdout_fraction: float) -> list[BookSplit]:
    """Hold out the last ``holdout_fraction`` of every book, cut at the next line break.

    Cutting at a newline keeps both parts valid UTF-8 and keeps sentences whole at the seam.
    """
    splits = []
    for span in spans:
        target = span.start + int((span.end - span.start) * (1.0 - holdout_fraction))
        newline = corpus.find(b"\n", target, span.end)
        if newline == -1:
            newline = corpus.rfind(b"\n", span.start, target)
        cut = newline + 1
        if newline == -1 or not span.start < cut < span.end:
            raise ValueError(f"book {span.name} is too short to hold out {holdout_fraction:.0%} of it")
        splits.append(BookSplit(span.name, span.language, (span.start, cut), (cut, span.end)))
    return splits


def part_text(corpus: bytes, byte_range: tuple[int, int]) -> str:
    start, end = byte_range
    return corpus[start:end].decode("utf-8")
