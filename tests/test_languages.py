"""ISO 639-1 codes and the languages Gutenberg headers name."""

import pytest

from src.data.languages import is_language_code, language_code


@pytest.mark.parametrize("code, ok", [("en", True), ("fr", True), ("zh", True), ("xx", False), ("EN", False),
                                      ("eng", False), ("", False), (None, False), (7, False)])
def test_iso_639_1_codes(code, ok):
    assert is_language_code(code) is ok


@pytest.mark.parametrize("name, code", [("English", "en"), ("Spanish", "es"), ("french", "fr"), ("Greek", "el"),
                                        ("Finnish", "fi"), ("Klingon", None), ("English, French", None)])
def test_gutenberg_language_names(name, code):
    assert language_code(name) == code
