import hashlib
import io
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.data.corpus import (BOM, LINE_BREAK, SEAM_SEARCH_BYTES, BookFile, CorpusWriter, LineMap, changed_file, line_chunks,
                             range_text, read_index, split_book, write_index)
from src.data.gutenberg import read_book
from src.pipeline.download import Tally, corpus_metrics
from tests.conftest import index_books

BOOKS = [("one", "en", "First line.\nSecond line.\nThird line ends.\n\nLast paragraph here."),
         ("dos", "es", "Línea uno.\nLínea dos con eñe.\nÚltima línea aquí.")]


def test_index_round_trip(tmp_path):
    splits = index_books(tmp_path, BOOKS, 0.3)
    files = [BookFile(str(tmp_path / "one.txt"), 10, "ab"), BookFile(str(tmp_path / "dos.txt"), 20, "cd")]
    write_index(tmp_path / "index.json", files, splits)
    assert read_index(tmp_path / "index.json") == (files, splits)


def test_split_holds_out_the_end_of_each_book_at_a_line_break(tmp_path):
    splits = index_books(tmp_path, BOOKS, 0.3)
    for split, (name, language, text) in zip(splits, BOOKS):
        assert (split.name, split.language) == (name, language)
        train, held_out = range_text(split.train), range_text(split.validation)
        assert train + held_out == text and train.endswith("\n")  # the cut follows a newline
        assert len(held_out) < len(train)
        assert (split.train_bytes, split.validation_bytes) == (len(train.encode()), len(held_out.encode()))
        assert split.train.end == split.validation.start  # whole lines: the held-out text starts one
    assert range_text(splits[1].validation) == "Última línea aquí."


def test_split_refuses_only_a_book_too_short_to_hold_out_anything(tmp_path):
    with pytest.raises(ValueError, match="book tiny is 1 bytes long: too short to hold out 10% of it"):
        index_books(tmp_path, [("tiny", "en", "x")], 0.1)


def test_a_book_on_one_line_is_cut_at_a_space_near_the_fraction(tmp_path):
    """Two megabytes without a line break: not 'too short', and no more held out than asked; the held-out text
    starts inside the file's one line, so both ranges are that line, less what is not theirs."""
    text = " ".join(f"word{i}" for i in range(300_000))
    split, = index_books(tmp_path, [("one_line", "en", text)], 0.1)
    train, held_out = range_text(split.train), range_text(split.validation)
    assert train.endswith(" ") and abs(len(held_out) - 0.1 * len(text)) < 20
    assert train + held_out == text
    assert split.train.start == split.validation.start == 0 and split.validation.skip == len(train)


def test_a_text_without_spaces_is_cut_between_two_characters(tmp_path):
    text = "日本語のテキスト" * 50_000  # three bytes a character, no line break, no space
    split, = index_books(tmp_path, [("ja", "ja", text)], 0.1)
    train, held_out = range_text(split.train), range_text(split.validation)  # valid UTF-8
    assert train + held_out == text and abs(len(held_out) - 0.1 * len(text)) <= 1


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab \nñ日🙂")), min_size=2, max_size=300),
       fraction=st.floats(0.01, 0.5))
def test_every_book_of_two_characters_or_more_splits_into_two_valid_parts_near_the_fraction(tmp_path_factory, text,
                                                                                              fraction):
    text = text.strip()
    if len(text) < 2:
        return
    split, = index_books(tmp_path_factory.mktemp("book"), [("book", "en", text)], fraction)
    train, held_out = range_text(split.train), range_text(split.validation)
    assert train and held_out and train + held_out == text
    target = int(len(text.encode()) * (1 - fraction))
    assert abs(split.train_bytes - target) <= SEAM_SEARCH_BYTES + 4


# What cleaning changes in a file: line endings (CRLF, a lone CR), a BOM, decomposed characters that NFC composes
# (e + combining acute), a combining mark at a line's start, whitespace at the edges.
FILE_PIECES = ["a", "é", "e\u0301", "\u0301", " ", "\t", "\n", "\r\n", "\r", "日", "🙂", "\u00a0"]


@settings(max_examples=400, deadline=None, database=None)
@given(pieces=st.lists(st.sampled_from(FILE_PIECES), min_size=1, max_size=80), bom=st.booleans(),
       cuts=st.lists(st.integers(0, 10**6), min_size=3, max_size=3))
def test_any_stretch_of_a_files_cleaned_text_reads_back_from_its_lines(tmp_path_factory, pieces, bom, cuts):
    """A TextRange reads back exactly the cleaned text it was made from, wherever it starts and ends: inside a line,
    at a line's start or end, on a CRLF, after a BOM, next to characters that NFC composes; two ranges one after
    the other from one LineMap, as a book's training and held-out text are made."""
    raw = (BOM if bom else b"") + "".join(pieces).encode("utf-8")
    path = tmp_path_factory.mktemp("file") / "book.txt"
    path.write_bytes(raw)
    book = read_book(raw, "book", "plain") if "".join(pieces).strip() else None
    if book is None:
        return
    whole = book.whole
    assert "\r" not in whole and whole == unicodedata.normalize("NFC", whole)
    start, middle, end = sorted(cut % (len(whole) + 1) for cut in cuts)
    lines = LineMap(str(path), raw, book)
    line_starts = {len(BOM) if bom else 0, len(raw)} | {found.end() for found in LINE_BREAK.finditer(raw)}
    for first, last in ((start, middle), (middle, end), (start, end)):
        text_range = lines.text_range(first, last)
        assert range_text(text_range) == whole[first:last]
        assert {text_range.start, text_range.end} <= line_starts  # whole lines of the file


def test_lines_are_found_past_many_blocks_of_mixed_line_endings(tmp_path):
    """A file of several megabytes, its lines ended by CRLF, CR or LF at random: every line is found through the
    block counts (COUNT_BLOCKS), not only the last few one by one."""
    draw = random.Random(4)
    raw = b"".join(f"line {i} é\u0301".encode() + draw.choice([b"\r\n", b"\r", b"\n"]) for i in range(300_000))
    path = tmp_path / "book.txt"
    path.write_bytes(raw)
    book = read_book(raw, "book", "plain")
    lines = LineMap(str(path), raw, book)
    for start, end in sorted(sorted(draw.randrange(len(book.whole)) for _ in range(2)) for _ in range(20)):
        assert range_text(lines.text_range(start, end)) == book.whole[start:end]


def test_a_gutenberg_file_with_crlf_reads_back_its_book(shared_corpus, tmp_path):
    """A Project Gutenberg file (CRLF line endings, header and licence around the book) indexes its book text."""
    raw = (shared_corpus / "pg11.txt").read_bytes()
    assert b"\r\n" in raw
    book = read_book(raw, "pg11")
    split = split_book("alice", "en", LineMap(str(shared_corpus / "pg11.txt"), raw, book), book,
                       book.text.encode(), 0.1)
    assert range_text(split.train) + range_text(split.validation) == book.text
    assert split.train_bytes + split.validation_bytes == len(book.text.encode())


def test_a_changed_book_file_is_named_with_what_changed(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"some text\n")
    indexed = BookFile(str(path), 10, "9a3c2f6e2e3d40a1b0e5f3c8c9d3c41f4c18fd3d1b8bb7e4a57c6ba7a4f0f1f0")
    assert changed_file(indexed) == f"{path} no longer has sha256 {indexed.sha256}"
    same = BookFile(str(path), 10, hashlib.sha256(b"some text\n").hexdigest())
    assert changed_file(same) is None
    path.write_bytes(b"some more text\n")
    assert changed_file(same) == f"{path} is 15 bytes long, not 10"
    path.unlink()
    assert changed_file(same) == f"{path} is missing"


def test_corpus_metrics_count_the_books_and_each_languages_share_in_a_fixed_number_of_figures():
    out = io.BytesIO()
    writer = CorpusWriter(out)
    for _, _, text in BOOKS:
        writer.add(text.encode())
    writer.finish()
    corpus = out.getvalue()
    languages = {"en": Tally(), "es": Tally()}
    for _, language, text in BOOKS:
        languages[language].add(len(text.encode()), len(text))
    metrics = corpus_metrics(len(corpus), languages)
    assert (metrics["bytes"], metrics["characters"], metrics["books"]) == (len(corpus), len(corpus.decode()), 2)
    assert metrics["languages"]["es"] == {"bytes": len(BOOKS[1][2].encode()), "characters": len(BOOKS[1][2]),
                                          "share": round(len(BOOKS[1][2]) / (len(BOOKS[0][2]) + len(BOOKS[1][2])), 6)}
    assert sum(v["share"] for v in metrics["languages"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(metrics) == {"bytes", "characters", "books", "languages"}  # no figure per book: those are a report's


def test_the_writer_joins_the_books_and_past_its_limit_empties_the_file_and_counts_the_same_bytes():
    joined = ("\n\n".join(text for _, _, text in BOOKS) + "\n").encode()
    for limit, holds in ((len(joined), joined), (len(joined) - 1, b""), (len(BOOKS[0][2]) + 1, b"")):
        out = io.BytesIO()
        writer = CorpusWriter(out, limit)
        for _, _, text in BOOKS:
            writer.add(text.encode())
        writer.finish()
        assert (out.getvalue(), writer.written) == (holds, holds == joined)
        assert writer.size == len(joined) and writer.books == 2


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet="ab\n é", max_size=300), limit=st.integers(1, 40))
def test_line_chunks_cover_the_range_and_end_at_line_breaks(text, limit):
    corpus = b"xx" + text.encode() + b"yy"
    chunks = line_chunks(corpus, (2, len(corpus) - 2), limit)
    assert chunks[0][0] == 2 and chunks[-1][1] == len(corpus) - 2
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for start, end in chunks[:-1]:
        assert corpus[end - 1:end] == b"\n"  # valid UTF-8 on either side, and no piece spans the cut
        assert end - start <= limit or b"\n" not in corpus[start:end - 1]  # longer: a single line
    if len(corpus) - 4 <= limit:
        assert len(chunks) == 1
