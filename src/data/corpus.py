"""The bilingual corpus file, the index of which byte range belongs to which book, and the split.

The split is defined here once: the last ``holdout_fraction`` of each book (cut at a line break near that
point, else at a space, else between two characters) is validation text, the rest is training text.
Tokenizer training and model training both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from src.atomic import write_json

BOOK_SEPARATOR = "\n\n"
# How far from the exact cut a line break, then a space, is looked for: a book with none that near (a book on
# one line, a text without spaces) is cut between two characters instead.
SEAM_SEARCH_BYTES = 10_000


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


def seam(corpus: bytes, start: int, end: int, target: int) -> int:
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


def split_books(corpus: bytes, spans: list[BookSpan], holdout_fraction: float) -> list[BookSplit]:
    """Hold out the last ``holdout_fraction`` of every book, cut at its ``seam``."""
    splits = []
    for span in spans:
        target = span.start + int((span.end - span.start) * (1.0 - holdout_fraction))
        cut = seam(corpus, span.start, span.end, target)
        if not span.start < cut < span.end:
            raise ValueError(f"book {span.name} is {span.end - span.start} bytes long: too short to hold out "
                             f"{holdout_fraction:.0%} of it and train on the rest")
        splits.append(BookSplit(span.name, span.language, (span.start, cut), (cut, span.end)))
    return splits


def part_text(corpus: bytes, byte_range: tuple[int, int]) -> str:
    start, end = byte_range
    return corpus[start:end].decode("utf-8")
