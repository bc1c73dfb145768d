"""A character n-gram profile of each language's text, and which language a sample is in.

A profile is the relative frequency of the most common character 1- to 3-grams of a text (lowercased,
letters only, words padded with a space). A sample is judged to be in the language whose profile is
nearest to its own by cosine similarity: the pipeline builds the profiles from each language's held-out
text, so any language the corpus holds can be recognised, with no word lists. The n-grams are counted from the
words' counts (``word_counts``), which add up book by book: a profile never needs its text in memory at once.
"""

from __future__ import annotations

import math
import re
from collections import Counter

PROFILE_SIZE = 400  # n-grams kept per language
NGRAM_ORDERS = (1, 2, 3)
_NOT_LETTERS = re.compile(r"[\W\d_]+", re.UNICODE)

Profile = dict[str, float]


def opening_words(text: str, count: int = 6) -> str:
    """The first ``count`` words of ``text``'s first whole paragraph (else of ``text``), on one line: a prompt in
    the text's language that starts where a sentence does."""
    _, blank_line, after = text.strip().partition("\n\n")
    words = after.split() if blank_line and len(after.split()) >= count else text.split()
    return " ".join(words[:count])


def word_counts(text: str) -> Counter[str]:
    """How often each word of ``text`` occurs: lowercased runs of letters."""
    return Counter(_NOT_LETTERS.sub(" ", text.lower()).split())


def ngrams_of_words(words: Counter[str]) -> Counter[str]:
    """The character n-grams of every word occurrence (each word padded with a space), counted."""
    counts: Counter[str] = Counter()
    for word, occurrences in words.items():
        padded = f" {word} "
        for n in NGRAM_ORDERS:
            for i in range(len(padded) - n + 1):
                if padded[i:i + n] != " ":
                    counts[padded[i:i + n]] += occurrences
    return counts


def ngram_counts(text: str) -> Counter[str]:
    return ngrams_of_words(word_counts(text))


def profile_of(counts: Counter[str], size: int = PROFILE_SIZE) -> Profile:
    """The ``size`` most frequent n-grams of ``counts`` and their share of all its n-grams (ties by n-gram)."""
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]
    return {gram: round(count / total, 6) for gram, count in top}


def build_profile(text: str, size: int = PROFILE_SIZE) -> Profile:
    """The profile of ``text`` (``profile_of`` its n-gram counts)."""
    return profile_of(ngram_counts(text), size)


def similarity(text: str, profile: Profile) -> float:
    """Cosine similarity of ``text``'s n-gram frequencies and ``profile`` (0 when the text has no letters)."""
    counts = ngram_counts(text)
    norm = math.sqrt(sum(c * c for c in counts.values())) * math.sqrt(sum(v * v for v in profile.values()))
    return sum(counts[gram] * share for gram, share in profile.items()) / norm if norm else 0.0


def nearest_language(text: str, profiles: dict[str, Profile]) -> tuple[str | None, dict[str, float]]:
    """(the language whose profile is nearest ``text``, or None for text without letters; every similarity)."""
    scores = {language: round(similarity(text, profile), 4) for language, profile in profiles.items()}
    best = max(scores, key=lambda language: (scores[language], language), default=None)
    return (best if best is not None and scores[best] > 0 else None), scores
