"""Turn a book as Project Gutenberg serves it into clean text: decode, strip boilerplate, normalise."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Both marker forms occur: "*** START OF THE PROJECT GUTENBERG EBOOK ..." (current) and
# "*** START OF THIS PROJECT GUTENBERG EBOOK ..." (older editions, e.g. pg11). Markers may be indented.
_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$",
                  re.IGNORECASE | re.MULTILINE)
# Older editions close the text with "End of Project Gutenberg's <title>" just before the END marker.
_TRAILER = re.compile(r"\n[ \t]*End of (?:the )?Project Gutenberg(?:['’]s)?\b[^\n]*\s*$", re.IGNORECASE)
# Text rarely holds control characters other than tab/newline; many of them means a binary file.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class NotTextError(ValueError):
    """The bytes are not a usable book: binary, undecodable, unmarked or empty."""


def decode(raw: bytes, label: str) -> str:
    """Strict UTF-8 (BOM allowed), checked to be text, then ``normalize_lines``."""
    if b"\x00" in raw:
        raise NotTextError(f"{label}: contains NUL bytes; this is a binary file, not a text book")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotTextError(f"{label}: not valid UTF-8 at byte {exc.start}: {exc.reason}") from None
    if len(_CONTROL.findall(text)) > max(16, len(text) // 1000):
        raise NotTextError(f"{label}: too many control characters; this does not look like text")
    return normalize_lines(text)


def normalize_lines(text: str) -> str:
    """Line endings made '\n' and Unicode NFC. Line by line: the normalised text of whole lines is the same
    whether they are normalised together or apart ('\n' is never part of a composition), which is what lets a
    book's cleaned text be read back from any run of its file's lines (src/data/corpus.py)."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def strip_boilerplate(text: str, label: str) -> tuple[int, int]:
    """Where the book lies in ``text``: between the Gutenberg START and END markers, less an old edition's
    trailer and the blank edges."""
    start = _START.search(text)
    end = _END.search(text, start.end() if start else 0)
    if not (start and end):
        missing = " and ".join(name for name, m in (("START", start), ("END", end)) if not m)
        raise NotTextError(
            f"{label}: no Gutenberg {missing} marker found ('*** START OF THE PROJECT GUTENBERG EBOOK"
            f" ... ***'); set format: plain for this source if it is not a Gutenberg file")
    trailer = _TRAILER.search(text, start.end(), end.start())
    body = stripped(text, start.end(), trailer.start() if trailer else end.start())
    if body[0] == body[1]:
        raise NotTextError(f"{label}: empty after stripping the Gutenberg header and footer")
    return body


def stripped(text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` less its leading and trailing whitespace (as ``str.strip``), as a range of ``text``."""
    part = text[start:end]
    lead = len(part) - len(part.lstrip())
    return start + lead, start + lead + len(part[lead:].rstrip())


_FIELD = re.compile(r"^[ \t]*(Title|Author|Language):[ \t]*(\S.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Book:
    """A book as cleaning leaves it: its file's text decoded and normalised (``whole``), the book's ``span`` in it,
    what its Gutenberg header says of it, and the licence removed."""
    whole: str
    span: tuple[int, int]
    title: str | None
    author: str | None
    language: str | None  # as the header names it ("English", "Spanish"), not a code
    licence: str  # everything after the END marker: Project Gutenberg's licence ("" for an unmarked source)

    @property
    def text(self) -> str:
        """The book's text, without boilerplate."""
        return self.whole[self.span[0]:self.span[1]]


def read_book(raw: bytes, label: str, text_format: str = "gutenberg") -> Book:
    """Decode and clean ``raw``.

    "gutenberg": the text between the markers, the header's Title, Author and Language lines, and the
    licence text after the END marker. "plain": the whole text, nothing said of it.
    """
    text = decode(raw, label)
    if text_format == "plain":
        span = stripped(text, 0, len(text))
        if span[0] == span[1]:
            raise NotTextError(f"{label}: empty")
        return Book(text, span, None, None, None, "")
    start = _START.search(text)
    end = _END.search(text, start.end() if start else 0)
    header = text[:start.start()] if start else ""
    fields = {name.lower(): value for name, value in reversed(_FIELD.findall(header))}  # the first of each wins
    return Book(text, strip_boilerplate(text, label), fields.get("title"),
                fields.get("author"), fields.get("language"), text[end.start():].strip() if end else "")
