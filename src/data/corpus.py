"""The corpus: each book's cleaned text as a range of its own file, the split, and the corpus text file.

The corpus is a view of the books, not a copy: the index (data/corpus_index.json) says, for each book, which
lines of its file (in books/, data/raw/, or wherever a pinned source lies) hold its training and its held-out
text, and how many characters of the first and last of those lines are not the book's. Reading a range back
(``range_text``) cleans its lines as the download stage cleaned the whole file (src/data/gutenberg.py), which
gives the same text, because that cleaning works line by line. So a shelf of books costs its own files on disk,
not a second copy; the corpus text file (``CorpusWriter``) is written for people to read, and only while the
corpus is small (corpus.text_file_mb).

The split is defined here once: the last ``holdout_fraction`` of each book (cut at a line break near that
point, else at a space, else between two characters) is validation text, the rest is training text.
Tokenizer training and model training both use it. A range is read in line-aligned chunks (``line_chunks``),
so no step needs a whole book in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from mmap import mmap
from pathlib import Path
from typing import BinaryIO, Union

from src.atomic import write_json
from src.data.fetch import sha256_of
from src.data.gutenberg import Book, normalize_lines

BOOK_SEPARATOR = "\n\n"
# How far from the exact cut a line break, then a space, is looked for: a book with none that near (a book on
# one line, a text without spaces) is cut between two characters instead.
SEAM_SEARCH_BYTES = 10_000

Text = Union[bytes, mmap]  # a book's bytes, or a read-only map of them
BOM = b"\xef\xbb\xbf"  # a UTF-8 file's optional first bytes, not text (decoding drops them)
LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # what ends a line of a book's file, as cleaning reads it
LONE_CR = re.compile(rb"\r(?!\n)")
COUNT_BLOCKS = (2**20, 2**14, 2**8)  # the blocks skipped when looking for a line, coarse to fine


@dataclass(frozen=True)
class TextRange:
    """Cleaned text held in a book's file: its bytes [start, end), whole lines, cleaned (``normalize_lines``),
    less ``skip`` characters at the head and ``drop`` at the tail (the rest of a line that is not this text's)."""
    file: str
    start: int
    end: int
    skip: int = 0
    drop: int = 0


@dataclass(frozen=True)
class BookSplit:
    """A book's training and held-out text, and their sizes in bytes of UTF-8 once cleaned."""
    name: str
    language: str
    train: TextRange
    validation: TextRange
    train_bytes: int
    validation_bytes: int


@dataclass(frozen=True)
class BookFile:
    """A file the index reads books from, as the download stage read it."""
    path: str
    bytes: int
    sha256: str


class CorpusWriter:
    """The corpus text file: books written one after another, joined by BOOK_SEPARATOR, with a final newline
    (``finish``). Past ``limit`` bytes it empties ``out`` and only counts the bytes the file would hold:
    ``written`` says whether ``out`` holds the corpus."""

    def __init__(self, out: BinaryIO, limit: float = float("inf")):
        self.out, self.limit = out, limit
        self.written = True
        self.books = 0
        self.size = 0

    def add(self, text: bytes) -> None:
        """Append one book's UTF-8 text."""
        if self.books:
            self._write(BOOK_SEPARATOR.encode())
        self._write(text)
        self.books += 1

    def finish(self) -> None:
        self._write(b"\n")

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.written and self.size > self.limit:
            self.out.seek(0)
            self.out.truncate()
            self.written = False
        if self.written:
            self.out.write(data)


class LineMap:
    """Places in a file's cleaned text (``book.whole``) as the file's lines: line n of the one is line n of
    the other, since cleaning keeps every line break (as '\n') and works line by line. Lines are looked up in
    increasing order as a book's ranges are made, so the file is counted through about once."""

    def __init__(self, path: str, raw: Text, book: Book):
        self.path, self.raw, self.whole = path, raw, book.whole
        self.lone_cr = LONE_CR.search(raw) is not None  # else every line break holds a '\n': one byte to count
        self.base = len(BOM) if raw[:len(BOM)] == BOM else 0  # where line 0 starts
        self.reached = (0, self.base)  # the last line found, and the byte where it starts

    def text_range(self, start: int, end: int) -> TextRange:
        """``whole[start:end]`` as a TextRange of the file."""
        first_line = self.whole.count("\n", 0, start)
        skip = start - (self.whole.rfind("\n", 0, start) + 1)
        last_line = first_line + self.whole.count("\n", start, end)
        if end == self.whole.rfind("\n", 0, end) + 1:  # ``end`` starts a line: the range ends with the one before
            return TextRange(self.path, self.line_start(first_line), self.line_start(last_line), skip, 0)
        line_end = self.whole.find("\n", end)
        if line_end == -1:  # the file's last line, with no line break
            return TextRange(self.path, self.line_start(first_line), len(self.raw), skip, len(self.whole) - end)
        return TextRange(self.path, self.line_start(first_line), self.line_start(last_line + 1), skip,
                         line_end + 1 - end)

    def line_start(self, line: int) -> int:
        """The byte where the file's ``line``-th line (from 0) starts: after that many line breaks. From the last
        line found (or the file's start), whole blocks with fewer breaks than are left to pass are counted and
        skipped, in ever smaller blocks (COUNT_BLOCKS), then the last few breaks are found one by one."""
        reached_line, position = self.reached if line >= self.reached[0] else (0, self.base)
        remaining = line - reached_line
        for block in COUNT_BLOCKS:
            while remaining:
                stop = min(position + block, len(self.raw))
                if stop < len(self.raw) and self.raw[stop - 1] == 0x0D:
                    stop -= 1  # no block ends between the two bytes of a CRLF
                breaks = self.breaks(position, stop)
                if breaks >= remaining or stop == len(self.raw):
                    break
                remaining -= breaks
                position = stop
        for found in LINE_BREAK.finditer(self.raw, position):
            if remaining == 0:
                break
            position, remaining = found.end(), remaining - 1
        if remaining:
            raise ValueError(f"{self.path} has fewer than {line} line breaks")
        self.reached = (line, position)
        return position

    def breaks(self, start: int, end: int) -> int:
        """The line breaks in the file's bytes [start, end): CRLF, CR or LF."""
        newlines = self.raw.count(b"\n", start, end)
        if not self.lone_cr:
            return newlines
        return newlines + self.raw.count(b"\r", start, end) - self.raw.count(b"\r\n", start, end)


def split_book(name: str, language: str, lines: LineMap, book: Book, text: bytes, holdout_fraction: float
               ) -> BookSplit:
    """The book's training and held-out text (``hold_out_cut`` of its UTF-8 ``text``, ``book.text``) as ranges
    of its file."""
    cut = hold_out_cut(text, name, holdout_fraction)
    start, end = book.span
    middle = start + len(text[:cut].decode("utf-8"))
    return BookSplit(name, language, lines.text_range(start, middle), lines.text_range(middle, end), cut,
                     len(text) - cut)


def range_text(text_range: TextRange) -> str:
    """The cleaned text of ``text_range``, read from its file."""
    with open(text_range.file, "rb") as f:
        data = os.pread(f.fileno(), text_range.end - text_range.start, text_range.start)
    text = normalize_lines(data.decode("utf-8"))
    return text[text_range.skip:len(text) - text_range.drop]


def write_index(path: Path, files: list[BookFile], splits: list[BookSplit]) -> None:
    write_json(path, {"files": [asdict(f) for f in files], "books": [asdict(s) for s in splits]})


def read_index(path: Path) -> tuple[list[BookFile], list[BookSplit]]:
    index = json.loads(Path(path).read_text(encoding="utf-8"))
    books = [BookSplit(**{**book, "train": TextRange(**book["train"]), "validation": TextRange(**book["validation"])})
             for book in index["books"]]
    return [BookFile(**f) for f in index["files"]], books


def changed_file(book_file: BookFile) -> str | None:
    """What differs in ``book_file`` since the index was written (its size, else its sha256), or None."""
    path = Path(book_file.path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != book_file.bytes:
        return f"{path} is {size} bytes long, not {book_file.bytes}"
    return None if sha256_of(path) == book_file.sha256 else f"{path} no longer has sha256 {book_file.sha256}"


def seam(corpus: Text, start: int, end: int, target: int) -> int:
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


def hold_out_cut(text: Text, name: str, holdout_fraction: float) -> int:
    """Where the held-out part of book ``name`` (its UTF-8 ``text``) starts: its ``seam`` near the last
    ``holdout_fraction`` of it. ValueError when the cut leaves a part empty."""
    cut = seam(text, 0, len(text), int(len(text) * (1.0 - holdout_fraction)))
    if not 0 < cut < len(text):
        raise ValueError(f"book {name} is {len(text)} bytes long: too short to hold out {holdout_fraction:.0%} of it "
                         f"and train on the rest")
    return cut


def line_chunks(corpus: Text, byte_range: tuple[int, int], limit: int) -> list[tuple[int, int]]:
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
