"""Choosing the next token from logits, and the generation loop: one module for the bundle runtime and the
PyTorch path alike (both hand it numpy logits), so the same seed gives the same text on either.

Each step: the repetition penalty, then the UTF-8 guard (byte-fallback pieces only where they keep the bytes
valid UTF-8), then temperature, top-k and top-p.

Every sampling value, whatever gives it, is held to the bounds of ``sampling_bounds``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# What may follow a UTF-8 lead byte (Unicode's table 3-7: no overlong forms, no surrogates, nothing past
# U+10FFFF): the second byte's range after these leads; every other continuation byte is in 0x80-0xBF.
_CONTINUATION = (0x80, 0xBF)
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 40  # 0 means no top-k cut
    top_p: float = 0.95  # 1 means no nucleus cut
    repetition_penalty: float = 1.0  # 1 means off


@dataclass
class GenerationTimes:
    time_to_first_token_ms: float = 0.0
    token_latencies_ms: list[float] = field(default_factory=list)  # every token after the first


class Decoder(Protocol):
    def prefill(self, ids: list[int]) -> np.ndarray: ...
    def step(self, token: int) -> np.ndarray: ...


def sequence_length(lead: int) -> int:
    """The bytes of the UTF-8 sequence that byte ``lead`` starts; 0 if it starts none (0x80-0xC1, 0xF5-0xFF)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    return 4 if 0xF0 <= lead <= 0xF4 else 0


class Utf8Guard:
    """Keeps the byte-fallback pieces of one generation valid UTF-8.

    A tokenizer with byte fallback spells a character outside its vocabulary as one piece per UTF-8 byte, and
    the model samples them one at a time: unguarded, it can pick a continuation byte with no lead, or a lead
    whose sequence never completes, and the text shows U+FFFD. The guard bans, while no sequence is pending,
    the byte pieces that cannot start one and the leads whose sequence would not fit in the tokens left; while
    one is pending, every id but the bytes that validly continue it (so not the end-of-text token either).
    """

    def __init__(self, byte_values: np.ndarray):
        """``byte_values[id]``: the byte that piece ``id`` stands for, -1 for every piece that is not a byte."""
        self.byte_values = byte_values
        is_byte = byte_values >= 0
        lengths = np.array([sequence_length(b) for b in range(256)])[np.where(is_byte, byte_values, 0)]
        # A multi-byte lead is allowed only where every continuation byte has a piece (byte fallback has all 256).
        longest = 4 if set(range(0x80, 0xC0)) <= set(byte_values[is_byte].tolist()) else 1
        # By the tokens left (1, 2, 3, 4 or more): the byte pieces that cannot start a character that fits.
        self._banned_at_start = [np.flatnonzero(is_byte & ~((lengths >= 1) & (lengths <= min(left, longest))))
                                 for left in (1, 2, 3, 4)]
        self._continuing = {span: np.flatnonzero(is_byte & (byte_values >= span[0]) & (byte_values <= span[1]))
                            for span in (_CONTINUATION, *_SECOND_BYTE.values())}
        self.pending = 0  # continuation bytes still needed
        self._allowed = self._continuing[_CONTINUATION]

    def mask(self, scores: np.ndarray, tokens_left: int) -> None:
        """Set the scores of the ids that may not come next, with ``tokens_left`` tokens to go, to -inf."""
        if self.pending:
            kept = scores[self._allowed]
            scores.fill(-np.inf)
            scores[self._allowed] = kept
        else:
            scores[self._banned_at_start[min(tokens_left, 4) - 1]] = -np.inf

    def push(self, token: int) -> None:
        """Follow the sequence with the chosen ``token``."""
        value = int(self.byte_values[token])
        if self.pending:
            self.pending -= 1
            self._allowed = self._continuing[_CONTINUATION]
        elif sequence_length(value) > 1:
            self.pending = sequence_length(value) - 1
            self._allowed = self._continuing[_SECOND_BYTE.get(value, _CONTINUATION)]


def penalize(scores: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """CTRL's repetition penalty, in place: the scores of the ``seen`` ids divided by ``penalty`` where positive,
    multiplied by it where negative, so a token already in the text is always less likely than it was."""
    scores[seen] = np.where(scores[seen] > 0, scores[seen] / penalty, scores[seen] * penalty)


def next_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Pick the next id from (V,) logits: greedy, or sampled after temperature, top-k and top-p.

    Under a cut the candidates are sorted most likely first (ties by id). Scores are scaled in fp64
    relative to the largest, so any temperature in (0, 10], however small, gives finite probabilities; the
    most likely candidate always stays, however small top_p. Ids at -inf are never picked.
    """
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64)
    if 0 < sampling.top_k < scores.size:
        candidates = np.argpartition(-scores, sampling.top_k - 1)[:sampling.top_k]
        candidates = candidates[np.lexsort((candidates, -scores[candidates]))]
    elif sampling.top_p < 1.0:
        candidates = np.lexsort((np.arange(scores.size), -scores))
    else:
        candidates = np.arange(scores.size)
    scores = scores[candidates]
    with np.errstate(over="ignore"):  # a tiny temperature sends every score but the largest to -inf: to 0
        probs = np.exp((scores - scores.max()) / sampling.temperature)
    if sampling.top_p < 1.0:  # the candidates are sorted here
        probs /= probs.sum()
        kept = (np.cumsum(probs) - probs) < sampling.top_p
        kept[0] = True
        probs = np.where(kept, probs, 0.0)
    cumulative = np.cumsum(probs)
    choice = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
    if choice == candidates.size:  # a draw rounded up to the very top: the last candidate with any probability
        choice = np.flatnonzero(probs)[-1]
    return int(candidates[choice])


def generate(decoder: Decoder, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int,
             stop_id: int | None = None, times: GenerationTimes | None = None,
             byte_values: np.ndarray | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` ids following ``prompt_ids``, each as soon as it is chosen (stopping early
    at ``stop_id``). ``times`` collects how long each took; the caller's time between ids is not counted.

    With ``byte_values`` (see ``Utf8Guard``) the byte pieces yielded always form valid UTF-8, every sequence
    complete by the last token."""
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens")
    times = times if times is not None else GenerationTimes()
    rng = np.random.default_rng(seed)
    guard = Utf8Guard(byte_values) if byte_values is not None else None
    produced = 0
    started = time.perf_counter()
    logits = decoder.prefill(prompt_ids)
    seen = np.zeros(logits.size, dtype=bool)
    seen[prompt_ids] = True
    while produced < max_new_tokens:
        scores = logits.astype(np.float64)
        if sampling.repetition_penalty != 1.0:
            penalize(scores, seen, sampling.repetition_penalty)
        if guard is not None:
            guard.mask(scores, max_new_tokens - produced)
        token = next_token(scores, sampling, rng)
        now = time.perf_counter()
        if produced:
            times.token_latencies_ms.append((now - started) * 1000)
        else:
            times.time_to_first_token_ms = (now - started) * 1000
        if token == stop_id:
            return
        if guard is not None:
            guard.push(token)
        seen[token] = True
        produced += 1
        yield token
        if produced == max_new_tokens:
            return
        started = time.perf_counter()
        logits = decoder.step(token)
