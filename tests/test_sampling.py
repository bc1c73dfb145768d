"""Sampling (src/lib/runtime/sampling.py): the cuts, the UTF-8 guard over byte pieces, the repetition penalty, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from src.lib.runtime.detokenize import TextStream, byte_values
from src.lib.runtime.model import load_bundle
from src.lib.runtime.sampling import GenerationTimes, Sampling, Utf8Guard, generate, next_token, penalize

PROMPTS = {"en": "It is a truth universally acknowledged", "es": "En un lugar de la Mancha"}
HOT = Sampling(temperature=2.0, top_k=0, top_p=1.0)


@pytest.fixture(scope="module")
def tiny(tiny_pipeline):
    """The tiny trained model's bundle, loaded."""
    return load_bundle(tiny_pipeline / "dist/tinytransformer")


class FavourBytes:
    """A decoder whose every logit of a byte piece is raised by ``bias``: a model that mostly samples bytes."""

    def __init__(self, decoder, values: np.ndarray, bias: float):
        self.decoder, self.bias = decoder, np.where(values >= 0, bias, 0.0).astype(np.float32)

    def prefill(self, ids):
        return self.decoder.prefill(ids) + self.bias

    def step(self, token):
        return self.decoder.step(token) + self.bias


def byte_runs(tokenizer, ids: list[int]) -> list[bytes]:
    """The bytes of each run of consecutive byte pieces in ``ids``."""
    runs, run = [], bytearray()
    for token in ids:
        if tokenizer.is_byte(token):
            run.append(int(tokenizer.id_to_piece(token)[1:-1], 16))
        elif run:
            runs.append(bytes(run))
            run = bytearray()
    return runs + [bytes(run)] if run else runs


def sample(model, language: str, tokens: int, seed: int, sampling: Sampling = HOT, bias: float = 0.0,
           guarded: bool = True) -> list[int]:
    values = byte_values(model.tokenizer)
    decoder = FavourBytes(model.decoder(), values, bias) if bias else model.decoder()
    return list(generate(decoder, model.tokenizer.encode(PROMPTS[language]), tokens, sampling, seed,
                         byte_values=values if guarded else None))


# --- every sampled byte sequence is valid UTF-8 ---------------------------------------------------------------------

@pytest.mark.parametrize("bias", [0.0, 12.0])
def test_thousands_of_hot_samples_in_both_languages_are_valid_utf8(tiny, bias):
    tokenizer, sampled = tiny.tokenizer, []
    for language in PROMPTS:
        for seed in range(3):
            ids = sample(tiny, language, 500, seed, bias=bias)
            sampled += ids
            text = tokenizer.decode(ids)
            assert "\ufffd" not in text, (language, seed, text)
            for run in byte_runs(tokenizer, ids):
                run.decode("utf-8")  # strict: raises on any invalid or unfinished sequence
            assert "".join(TextStream(tokenizer, iter(ids))) == text
    byte_share = np.mean([tokenizer.is_byte(i) for i in sampled])
    assert len(sampled) == 3000 and (byte_share > 0.5 if bias else byte_share > 0), byte_share


def test_without_the_guard_a_model_that_favours_bytes_writes_broken_characters(tiny):
    """What the guard prevents, on the same model and seeds: the test above can fail."""
    broken = [sample(tiny, language, 500, seed, bias=12.0, guarded=False)
              for language in PROMPTS for seed in range(3)]
    assert any("\ufffd" in tiny.tokenizer.decode(ids) for ids in broken)


@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5])
def test_a_sequence_started_near_the_end_is_complete_by_the_last_token(tiny, tokens):
    for seed in range(40):
        ids = sample(tiny, "es", tokens, seed, bias=12.0)
        assert len(ids) == tokens and "\ufffd" not in tiny.tokenizer.decode(ids), (seed, ids)


def allowed(guard: Utf8Guard, tokens_left: int = 10) -> set[int]:
    scores = np.zeros(len(guard.byte_values))
    guard.mask(scores, tokens_left)
    return set(np.flatnonzero(np.isfinite(scores)).tolist())


def _valid_prefixes() -> set[bytes]:
    """The first one, two and three bytes of the UTF-8 encoding of every character (Python's encoder as the
    oracle); for characters of four bytes, one in 64 is enough (their last byte takes every value 0x80-0xBF)."""
    characters = (*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 64))
    return {chr(c).encode()[:n] for c in characters for n in (1, 2, 3)}


VALID_PREFIXES = _valid_prefixes()


def valid_next_bytes(prefix: bytes) -> set[int]:
    """The bytes after which ``prefix`` is still the start of a valid UTF-8 character (or is one)."""
    if len(prefix) == 3:
        return set(range(0x80, 0xC0))
    return {byte for byte in range(256) if prefix + bytes([byte]) in VALID_PREFIXES}


def test_the_guard_allows_exactly_the_bytes_that_keep_the_text_valid_utf8():
    """A vocabulary of the 256 byte pieces (ids 0-255) and one other piece (256), after every valid prefix of
    up to two bytes and some of three: the allowed ids are the oracle's bytes (and the other piece between
    characters)."""
    values = np.concatenate([np.arange(256), [-1]])
    prefixes = [b""] + [bytes([lead]) for lead in range(0xC2, 0xF5)]
    prefixes += [p + bytes([b]) for p in prefixes[1:] if p[0] >= 0xE0 for b in valid_next_bytes(p)]
    prefixes += [p + bytes([b]) for p in prefixes if len(p) == 2 and p[0] >= 0xF0 for b in (0x80, 0xBF)]
    assert len(prefixes) > 1000
    for prefix in prefixes:
        guard = Utf8Guard(values)
        for byte in prefix:
            guard.push(byte)
        assert allowed(guard) == valid_next_bytes(prefix) | ({256} if not prefix else set()), prefix


def test_a_character_is_started_only_if_it_fits_in_the_tokens_left():
    values = np.concatenate([np.arange(256), [-1]])
    ascii_and_other = set(range(0x80)) | {256}
    expected = {1: ascii_and_other, 2: ascii_and_other | set(range(0xC2, 0xE0)),
                3: ascii_and_other | set(range(0xC2, 0xF0)), 4: ascii_and_other | set(range(0xC2, 0xF5))}
    for tokens_left, ids in expected.items():
        assert allowed(Utf8Guard(values), tokens_left) == ids


def test_a_vocabulary_missing_continuation_bytes_never_starts_a_multibyte_character():
    values = np.concatenate([np.arange(0xC0), [-1]])  # byte pieces 0x00-0xBF only, then another piece
    values[0x90] = -1
    assert allowed(Utf8Guard(values)) == set(range(0x80)) | {0x90, 0xC0}  # ASCII, and the pieces that are no bytes


# --- the repetition penalty -----------------------------------------------------------------------------------------

def test_the_penalty_divides_positive_scores_and_multiplies_negative_ones_of_seen_ids_only():
    scores = np.array([2.0, -2.0, 3.0, -1.0, 0.0])
    penalize(scores, np.array([True, True, False, False, True]), 2.0)
    assert scores.tolist() == [1.0, -4.0, 3.0, -1.0, 0.0]


class Loop:
    """A model that has learnt a loop: after token t it favours t + 1 within 0-3 (4.0), every other id less (2.0-1.8)."""

    def prefill(self, ids):
        return self.step(ids[-1])

    def step(self, token):
        logits = np.linspace(2.0, 1.8, 64, dtype=np.float32)
        logits[(token + 1) % 4] = 4.0
        return logits


def repeated_trigrams(ids: list[int]) -> float:
    trigrams = list(zip(ids, ids[1:], ids[2:]))
    return 1 - len(set(trigrams)) / len(trigrams)


def test_the_penalty_breaks_a_loop():
    greedy = Sampling(temperature=0, top_k=0, top_p=1.0)
    looping = list(generate(Loop(), [0], 40, greedy, 0))
    assert looping[:8] == [1, 2, 3, 0, 1, 2, 3, 0] and repeated_trigrams(looping) > 0.85
    penalized = list(generate(Loop(), [0], 40, Sampling(0, 0, 1.0, repetition_penalty=2.5), 0))
    assert penalized[:3] == [1, 2, 3] and len(set(penalized)) == 40  # 4 / 2.5 < 1.8: any new id is more likely


@pytest.mark.parametrize("language", sorted(PROMPTS))
def test_the_penalty_lowers_the_repeats_of_the_trained_models_greedy_loop(tiny, language):
    plain = sample(tiny, language, 120, 0, Sampling(0, 0, 1.0))
    penalized = sample(tiny, language, 120, 0, Sampling(0, 0, 1.0, repetition_penalty=1.5))
    assert repeated_trigrams(plain) > 0.3 and repeated_trigrams(penalized) < repeated_trigrams(plain) / 2


# --- the cuts, seeds and timings ------------------------------------------------------------------------------------

def test_sampling_cuts_and_extreme_values():
    logits = np.array([5.0, 4.0, 1.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert next_token(logits, Sampling(0, 0, 1.0), rng) == 0
    assert {next_token(logits, Sampling(1.0, 2, 1.0), rng) for _ in range(200)} == {0, 1}
    # top_p 0.5: the most likely token alone already holds more than half the mass.
    assert {next_token(logits, Sampling(1.0, 0, 0.5), rng) for _ in range(50)} == {0}
    assert {next_token(logits, Sampling(5e-324, 0, 1.0), rng) for _ in range(20)} == {0}
    assert {next_token(logits, Sampling(1.0, 0, 1e-300), rng) for _ in range(20)} == {0}
    tied = np.zeros(6, dtype=np.float32)
    assert {next_token(tied, Sampling(1.0, 3, 1.0), rng) for _ in range(100)} == {0, 1, 2}  # ties: lowest ids


class TopOfTheRange:
    """A generator whose every draw is the largest double below 1: the top of the cumulative range."""

    def random(self):
        return np.nextafter(1.0, 0.0)


@pytest.mark.parametrize("sampling", [Sampling(1.0, 0, 1.0), Sampling(1.0, 3, 1.0), Sampling(1.0, 0, 0.99)])
def test_ids_at_minus_infinity_are_never_picked(sampling):
    logits = np.array([1.0, 2.0, -np.inf, 3.0, -np.inf])
    assert next_token(logits, sampling, TopOfTheRange()) in (0, 1, 3)
    picked = {next_token(logits, sampling, np.random.default_rng(seed)) for seed in range(300)}
    assert picked <= {0, 1, 3}


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others(tiny):
    sampling = Sampling(1.0, 0, 1.0, repetition_penalty=1.3)
    assert sample(tiny, "en", 60, 5, sampling, 4.0) == sample(tiny, "en", 60, 5, sampling, 4.0)
    assert sample(tiny, "en", 60, 5, sampling, 4.0) != sample(tiny, "en", 60, 6, sampling, 4.0)


def test_timings_leave_out_the_callers_time(tiny):
    times = GenerationTimes()
    for _ in generate(tiny.decoder(), tiny.tokenizer.encode("It is"), 5, Sampling(), 0, times=times):
        pass
    assert times.time_to_first_token_ms > 0 and len(times.token_latencies_ms) == 4


def test_generation_stops_at_the_stop_id_and_never_yields_it():
    ids = list(generate(Loop(), [0], 40, Sampling(0, 0, 1.0), 0, stop_id=3))
    assert ids == [1, 2]
