import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.data.corpus import (SEAM_SEARCH_BYTES, CorpusWriter, assemble, line_chunks, part_text, read_index,
                             split_books, write_index)
from src.pipeline.download import Tally, corpus_metrics

BOOKS = [("one", "en", "First line.\nSecond line.\nThird line ends.\n\nLast paragraph here."),
         ("dos", "es", "Línea uno.\nLínea dos con eñe.\nÚltima línea aquí.")]


def test_spans_point_at_each_book():
    corpus, spans = assemble(BOOKS)
    assert [s.name for s in spans] == ["one", "dos"]
    for (name, language, text), span in zip(BOOKS, spans):
        assert span.language == language
        assert corpus[span.start:span.end].decode() == text
    assert corpus.endswith(b"\n")


def test_index_round_trip(tmp_path):
    _, spans = assemble(BOOKS)
    write_index(tmp_path / "index.json", spans)
    assert read_index(tmp_path / "index.json") == spans


def test_split_holds_out_the_end_of_each_book_at_a_line_break():
    corpus, spans = assemble(BOOKS)
    splits = split_books(corpus, spans, 0.3)
    for split, span in zip(splits, spans):
        assert split.train[0] == span.start and split.validation[1] == span.end
        assert split.train[1] == split.validation[0]
        assert corpus[split.train[1] - 1:split.train[1]] == b"\n"  # the cut follows a newline
        train, held_out = part_text(corpus, split.train), part_text(corpus, split.validation)  # valid UTF-8
        assert len(held_out) < len(train)
    assert part_text(corpus, splits[1].validation) == "Última línea aquí."


def test_split_refuses_only_a_book_too_short_to_hold_out_anything():
    corpus, spans = assemble([("tiny", "en", "x")])
    with pytest.raises(ValueError, match="book tiny is 1 bytes long: too short to hold out 10% of it"):
        split_books(corpus, spans, 0.1)


def test_a_book_on_one_line_is_cut_at_a_space_near_the_fraction():
    """Two megabytes without a line break: not 'too short', and no more held out than asked."""
    text = " ".join(f"word{i}" for i in range(300_000))
    corpus, spans = assemble([("one_line", "en", text)])
    split, = split_books(corpus, spans, 0.1)
    held_out = part_text(corpus, split.validation)
    assert corpus[split.validation[0] - 1:split.validation[0]] == b" "
    assert abs(len(held_out) - 0.1 * len(text)) < 20
    assert part_text(corpus, split.train) + held_out == text


def test_a_text_without_spaces_is_cut_between_two_characters():
    text = "日本語のテキスト" * 50_000  # three bytes a character, no line break, no space
    corpus, spans = assemble([("ja", "ja", text)])
    split, = split_books(corpus, spans, 0.1)
    train, held_out = part_text(corpus, split.train), part_text(corpus, split.validation)  # valid UTF-8
    assert train + held_out == text and abs(len(held_out) - 0.1 * len(text)) <= 1


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab \nñ日🙂")), min_size=2, max_size=300),
       fraction=st.floats(0.01, 0.5))
def test_every_book_of_two_characters_or_more_splits_into_two_valid_parts_near_the_fraction(text, fraction):
    corpus, spans = assemble([("book", "en", text)])
    split, = split_books(corpus, spans, fraction)
    train, held_out = part_text(corpus, split.train), part_text(corpus, split.validation)
    assert train and held_out and train + held_out == text
    target = int(len(text.encode()) * (1 - fraction))
    assert abs(split.validation[0] - target) <= SEAM_SEARCH_BYTES + 4


def test_corpus_metrics_count_the_books_and_each_languages_share_in_a_fixed_number_of_figures():
    corpus, _ = assemble(BOOKS)
    languages = {"en": Tally(), "es": Tally()}
    for _, language, text in BOOKS:
        languages[language].add(len(text.encode()), len(text))
    metrics = corpus_metrics(len(corpus), languages)
    assert (metrics["bytes"], metrics["characters"], metrics["books"]) == (len(corpus), len(corpus.decode()), 2)
    assert metrics["languages"]["es"] == {"bytes": len(BOOKS[1][2].encode()), "characters": len(BOOKS[1][2]),
                                          "share": round(len(BOOKS[1][2]) / (len(BOOKS[0][2]) + len(BOOKS[1][2])), 6)}
    assert sum(v["share"] for v in metrics["languages"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(metrics) == {"bytes", "characters", "books", "languages"}  # no figure per book: those are a report's


def test_the_writer_appends_books_as_assemble_joins_them():
    out = io.BytesIO()
    writer = CorpusWriter(out)
    spans = [writer.add(name, language, text.encode()) for name, language, text in BOOKS]
    writer.finish()
    assert (out.getvalue(), spans) == assemble(BOOKS) and writer.size == len(out.getvalue())


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
