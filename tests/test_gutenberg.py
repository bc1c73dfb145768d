import unicodedata

import pytest

from src.data.gutenberg import NotTextError, read_book, strip_boilerplate

BOM = "\ufeff".encode()


def book(start="*** START OF THE PROJECT GUTENBERG EBOOK TEST ***",
         end="*** END OF THE PROJECT GUTENBERG EBOOK TEST ***", body="Chapter 1\r\n\r\nIt was a dark night.\r\n"):
    return BOM + f"Title: Test\r\nLicense blah\r\n{start}\r\n\r\n{body}\r\n{end}\r\nFooter licence text\r\n".encode()


def test_current_marker_form_with_bom_and_crlf():
    text = read_book(book(), "test").text
    assert text == "Chapter 1\n\nIt was a dark night."


def test_older_this_marker_form_and_indented_markers():
    raw = book(start="*** START OF THIS PROJECT GUTENBERG EBOOK ALICE’S ADVENTURES ***",
               end="      *** END OF THIS PROJECT GUTENBERG EBOOK ALICE’S ADVENTURES ***")
    assert read_book(raw, "alice").text == "Chapter 1\n\nIt was a dark night."


def test_older_trailer_line_before_the_end_marker_is_dropped():
    raw = book(body="THE END\r\n\r\nEnd of Project Gutenberg’s Alice’s Adventures in Wonderland, by Lewis Carroll\r\n")
    assert read_book(raw, "alice").text == "THE END"


def test_lone_carriage_returns_and_nfc():
    decomposed = "Quijote de la Manchа, cafe\u0301"
    raw = f"*** START OF THE PROJECT GUTENBERG EBOOK X ***\r{decomposed}\r*** END OF THE PROJECT GUTENBERG EBOOK X ***"
    text = read_book(raw.encode(), "x").text
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
        read_book(raw, "book").text


def test_unmarked_text_is_kept_whole_only_as_plain_text():
    assert read_book(b"\nplain text\n", "x", "plain").text == "plain text"
    with pytest.raises(NotTextError, match="set format: plain"):
        strip_boilerplate("plain text", "x")
    with pytest.raises(NotTextError, match="empty"):
        read_book(b"\n  \n", "x", "plain")


def test_the_shared_books_strip_cleanly(shared_corpus):
    for name, first, last in [
        ("pg1342.txt", "[Illustration:", "CHISWICK PRESS"),
        ("pg11.txt", "ALICE’S ADVENTURES IN WONDERLAND", "THE END"),
        ("pg2000.txt", "El ingenioso hidalgo don Quijote de la Mancha", None),
    ]:
        raw = (shared_corpus / name).read_bytes()
        text = read_book(raw, name).text
        assert text.startswith(first)
        assert "PROJECT GUTENBERG" not in text.upper()
        assert "\r" not in text and "\ufeff" not in text
        if last:
            assert last in text[-3000:]


def test_the_header_fields_and_the_licence_are_kept_apart_from_the_text():
    raw = book(body="Chapter 1\r\n").replace(b"Title: Test\r\n", b"Title: Test Book\r\nAuthor: Someone\r\n"
                                                 b"Language: English\r\n")
    found = read_book(raw, "test")
    assert (found.title, found.author, found.language) == ("Test Book", "Someone", "English")
    assert found.licence.startswith("*** END OF THE PROJECT GUTENBERG EBOOK TEST ***")
    assert found.licence.endswith("Footer licence text") and "Footer" not in found.text
    unmarked = read_book(b"Title: Not a header\nplain text", "notes", "plain")
    assert unmarked.title is None and unmarked.licence == "" and unmarked.text.startswith("Title:")


def test_the_shared_books_name_their_title_and_language(shared_corpus):
    found = {name: read_book((shared_corpus / name).read_bytes(), name) for name in ("pg1342.txt", "pg11.txt", "pg2000.txt")}
    assert found["pg1342.txt"].title == "Pride and Prejudice" and found["pg1342.txt"].language == "English"
    assert found["pg2000.txt"].language == "Spanish" and "Quijote" in found["pg2000.txt"].title
    assert all("Project Gutenberg" in book.licence for book in found.values())


@pytest.mark.parametrize("start, end", [
    ("*** START OF THE PROJECT GUTENBERG EBOOK X ***", "*** END OF THE PROJECT GUTENBERG EBOOK X ***"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***", "*** END OF THIS PROJECT GUTENBERG EBOOK X ***"),
])
@pytest.mark.parametrize("bom, newline", [("", "\n"), ("\ufeff", "\r\n")])
def test_the_header_language_is_read_in_both_marker_generations_with_bom_and_crlf(start, end, bom, newline):
    text = newline.join([f"{bom}The Project Gutenberg eBook", "Title: Le Village", "Language: French", "", start,
                         "Le matin où la rivière déborda.", end, "licence"])
    book = read_book(text.encode("utf-8"), "x")
    assert (book.language, book.title, book.text) == ("French", "Le Village", "Le matin où la rivière déborda.")
