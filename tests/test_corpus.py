import pytest

from src.data.corpus import assemble, part_text, read_index, split_books, write_index
from src.pipeline.download import corpus_metrics

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


def test_split_refuses_a_book_too_short_to_hold_out():
    corpus, spans = assemble([("tiny", "en", "one line only")])
    with pytest.raises(ValueError, match="too short"):
        split_books(corpus, spans, 0.1)


def test_corpus_metrics_shares():
    corpus, spans = assemble(BOOKS)
    metrics = corpus_metrics(corpus, spans)
    assert metrics["bytes"] == len(corpus)
    assert metrics["books"]["dos"]["characters"] == len(BOOKS[1][2])
    assert metrics["books"]["dos"]["bytes"] == len(BOOKS[1][2].encode())
    assert sum(v["share"] for v in metrics["languages"].values()) == pytest.approx(1.0, abs=1e-5)
    assert metrics["languages"]["es"]["share"] == metrics["books"]["dos"]["share"]
