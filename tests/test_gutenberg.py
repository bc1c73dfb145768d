import unicodedata

import pytest

from src.data.gutenberg import NotTextError, clean_book, strip_boilerplate

BOM = "\ufeff".encode()


def book(start="*** START OF THE PROJECT GUTENBERG EBOOK TEST ***",
         end="*** END OF THE PROJECT GUTENBERG EBOOK TEST ***", body="Chapter 1\r\n\r\nIt was a dark night.\r\n"):
    return BOM + f"Title: Test\r\nLicense blah\r\n{start}\r\n\r\n{body}\r\n{end}\r\nFooter licence text\r\n".encode()


def test_current_marker_form_with_bom_and_crlf():
    text = clean_book(book(), "test")
    assert text == "Chapter 1\n\nIt was a dark night."


def test_older_this_marker_form_and_indented_markers():
    raw = book(start="*** START OF THIS PROJECT GUTENBERG EBOOK ALICE’S ADVENTURES ***",
               end="      *** END OF THIS PROJECT GUTENBERG EBOOK ALICE’S ADVENTURES ***")
    assert clean_book(raw, "alice") == "Chapter 1\n\nIt was a dark night."


def test_older_trailer_line_before_the_end_marker_is_dropped():
    raw = book(body="THE END\r\n\r\nEnd of Project Gutenberg’s Alice’s Adventures in Wonderland, by Lewis Carroll\r\n")
    assert clean_book(raw, "alice") == "THE END"


def test_lone_carriage_returns_and_nfc():
    decomposed = "Quijote de la Manchа, cafe\u0301"
    raw = f"*** START OF THE PROJECT GUTENBERG EBOOK X ***\r{decomposed}\r*** END OF THE PROJECT GUTENBERG EBOOK X ***"
    text = clean_book(raw.encode(), "x")
    assert text == unicodedata.normalize("NFC", decomposed)
    assert "\r" not in text and "café" in text


@pytest.mark.parametrize("raw, message", [
    (b"just some text with no markers", "no Gutenberg START and END marker"),
    (book(end="THE END"), "no Gutenberg END marker"),
    (book(start="Begin"), "no Gutenberg START marker"),
    (book(body="   \r\n\r\n "), "empty after stripping"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("Espa\u00f1a".encode("latin-1") * 10, "not valid UTF-8"),
    (bytes(range(1, 32)) * 50, "control characters"),
])
def test_refuses_what_is_not_a_book(raw, message):
    with pytest.raises(NotTextError, match=message):
        clean_book(raw, "book")


def test_unmarked_text_is_kept_whole_only_when_allowed():
    assert strip_boilerplate("\nplain text\n", "x", allow_unmarked=True) == "plain text"
    with pytest.raises(NotTextError, match="allow_unmarked"):
        strip_boilerplate("plain text", "x")


def test_the_shared_books_strip_cleanly(shared_corpus):
    for name, first, last in [
        ("pg1342.txt", "[Illustration:", "CHISWICK PRESS"),
        ("pg11.txt", "ALICE’S ADVENTURES IN WONDERLAND", "THE END"),
        ("pg2000.txt", "El ingenioso hidalgo don Quijote de la Mancha", None),
    ]:
        raw = (shared_corpus / name).read_bytes()
        text = clean_book(raw, name)
        assert text.startswith(first)
        assert "PROJECT GUTENBERG" not in text.upper()
        assert "\r" not in text and "\ufeff" not in text
        if last:
            assert last in text[-3000:]
