"""Choosing the next token from logits, and the generation loop: one module for the bundle runtime and the
PyTorch path alike (both hand it numpy logits), so the same seed gives the same text on either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 40  # 0 means no top-k cut
    top_p: float = 0.95  # 1 means no nucleus cut


@dataclass
class GenerationTimes:
    time_to_first_token_ms: float = 0.0
    token_latencies_ms: list[float] = field(default_factory=list)  # every token after the first


class Decoder(Protocol):
    def prefill(self, ids: list[int]) -> np.ndarray: ...
    def step(self, token: int) -> np.ndarray: ...


def next_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Pick the next id from (V,) logits: greedy, or sampled after temperature, top-k and top-p.

    Under a cut the candidates are sorted most likely first (ties by id). Scores are scaled in fp64
    relative to the largest, so any temperature in (0, 10], however small, gives finite probabilities; the
    most likely candidate always stays, however small top_p.
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
    return int(candidates[min(choice, candidates.size - 1)])


def generate(decoder: Decoder, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int,
             stop_id: int | None = None, times: GenerationTimes | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` ids following ``prompt_ids``, each as soon as it is chosen (stopping early
    at ``stop_id``). ``times`` collects how long each took; the caller's time between ids is not counted."""
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens")
    times = times if times is not None else GenerationTimes()
    rng = np.random.default_rng(seed)
    produced = 0
    started = time.perf_counter()
    logits = decoder.prefill(prompt_ids)
    while produced < max_new_tokens:
        token = next_token(logits, sampling, rng)
        now = time.perf_counter()
        if produced:
            times.token_latencies_ms.append((now - started) * 1000)
        else:
            times.time_to_first_token_ms = (now - started) * 1000
        if token == stop_id:
            return
        produced += 1
        yield token
        if produced == max_new_tokens:
            return
        started = time.perf_counter()
        logits = decoder.step(token)
