"""Text as it is generated: byte-fallback pieces are held until they complete a character."""

import pytest

from src.data.tokenizer import load_tokenizer
from src.lib.runtime.detokenize import Detokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_pipeline):
    return load_tokenizer(tiny_pipeline / "data/tokenizer.model")


def test_pushing_ids_one_at_a_time_gives_the_decoded_text(tokenizer):
    text = "En un lugar de la Mancha,\n\n  It was 日本 ok — ñ ‽"
    ids = tokenizer.encode(text)
    assert any(tokenizer.is_byte(i) for i in ids), "the test needs characters outside the vocabulary"
    stream = Detokenizer(tokenizer)
    parts = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(parts) == stream.text == tokenizer.decode(ids) == text
    assert "\ufffd" not in "".join(parts)


def test_bytes_are_held_until_they_make_a_character(tokenizer):
    ids = tokenizer.encode("日")
    assert len(ids) == 3 and all(tokenizer.is_byte(i) for i in ids)
    stream = Detokenizer(tokenizer)
    assert [stream.push(i) for i in ids] == ["", "", "日"]


def test_an_unfinished_byte_sequence_ends_as_one_replacement_character(tokenizer):
    first_byte = tokenizer.encode("日")[0]
    stream = Detokenizer(tokenizer)
    assert stream.push(first_byte) == ""
    assert stream.push(tokenizer.encode("a")[0]) == "\ufffda"
    assert stream.push(first_byte) == "" and stream.finish() == "\ufffd"
