"""ISO 639-1 codes, Gutenberg language names, and the n-gram profiles validate's language check uses."""

import random
import re

import pytest

from src.data.gutenberg import read_book
from src.data.languages import build_profile, is_language_code, language_code, nearest_language, opening_words
from tests.conftest import REPO_ROOT

FRENCH = (REPO_ROOT / "tests/fixtures/notes_fr.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("code, ok", [("en", True), ("fr", True), ("zh", True), ("xx", False), ("EN", False),
                                      ("eng", False), ("", False), (None, False), (7, False)])
def test_iso_639_1_codes(code, ok):
    assert is_language_code(code) is ok


@pytest.mark.parametrize("name, code", [("English", "en"), ("Spanish", "es"), ("french", "fr"), ("Greek", "el"),
                                        ("Finnish", "fi"), ("Klingon", None), ("English, French", None)])
def test_gutenberg_language_names(name, code):
    assert language_code(name) == code


@pytest.fixture(scope="module")
def held_out(shared_corpus):
    """Each language's text split as the pipeline splits it: profiles from the last 10%, samples from the rest."""
    texts = {"en": read_book((shared_corpus / "pg1342.txt").read_bytes(), "en").text,
             "es": read_book((shared_corpus / "pg2000.txt").read_bytes(), "es").text, "fr": FRENCH}
    return {language: (text[:int(len(text) * 0.9)], text[int(len(text) * 0.9):]) for language, text in texts.items()}


def test_paragraphs_are_recognised_by_the_profile_of_their_languages_held_out_text(held_out):
    profiles = {language: build_profile(held) for language, (_, held) in held_out.items()}
    rng = random.Random(0)
    for language, (train, _) in held_out.items():
        paragraphs = [p for p in re.split(r"\n\s*\n", train) if len(p) > 150]
        for paragraph in rng.sample(paragraphs, min(30, len(paragraphs))):
            assert nearest_language(paragraph, profiles)[0] == language, paragraph[:80]


def test_a_sample_in_the_wrong_language_is_not_its_prompts(held_out):
    profiles = {language: build_profile(held) for language, (_, held) in held_out.items()}
    english_sample = "It was the best of times, and she said that he had gone to the house before the rain."
    assert nearest_language(english_sample, profiles)[0] == "en" != "fr"
    assert nearest_language("12 34 — !!", profiles) == (None, {"en": 0.0, "es": 0.0, "fr": 0.0})


def test_profiles_keep_the_most_frequent_ngrams_as_shares():
    profile = build_profile("Abab, abab!", size=3)  # per word " abab ": 4 1-grams, 5 2-grams, 4 3-grams
    assert profile == {"a": round(4 / 26, 6), "ab": round(4 / 26, 6), "b": round(4 / 26, 6)}


def test_opening_words():
    assert opening_words("  Le matin\n où la rivière déborda, le village entier", 4) == "Le matin où la"
