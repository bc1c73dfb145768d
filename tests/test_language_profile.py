"""Character n-gram profiles: validate's language check, on held-out paragraphs of three languages."""

import random
import re

import pytest

from src.data.gutenberg import read_book
from src.data.language_profile import build_profile, nearest_language, opening_words
from tests.conftest import REPO_ROOT

FRENCH = (REPO_ROOT / "tests/fixtures/notes_fr.txt").read_text(encoding="utf-8")


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


def test_opening_words_start_at_the_first_whole_paragraph():
    assert opening_words("  Le matin\n où la rivière déborda, le village entier", 4) == "Le matin où la"
    assert opening_words("pire, qu'ils\n\nLe livre parut à l'automne.", 4) == "Le livre parut à"
    assert opening_words("pire, qu'ils\n\nFin.", 4) == "pire, qu'ils Fin."
