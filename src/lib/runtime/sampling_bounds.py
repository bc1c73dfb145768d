"""The one rule for each sampling value, whatever gives it: a call's options (the API, the CLI), a bundle's
generation_config.json, params.yaml's generation and validate sections.

A module of its own, with nothing else in it: the params' validation reads it, so every stage depends on it,
and a change to how tokens are sampled must not make those stages run again.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

MAX_TEMPERATURE = 10.0
MAX_REPETITION_PENALTY = 10.0


class Bounds(NamedTuple):
    integer: bool  # an integer, else any real number
    low: float
    high: float | None  # None: no upper bound
    low_open: bool  # low itself is not allowed
    words: str  # the bounds as a message says them


SAMPLING_BOUNDS = {
    "temperature": Bounds(False, 0.0, MAX_TEMPERATURE, False, f"in [0, {MAX_TEMPERATURE:g}] (0 = greedy)"),
    "top_k": Bounds(True, 0, None, False, "0 (off) or more"),
    "top_p": Bounds(False, 0.0, 1.0, True, "in (0, 1]"),
    "repetition_penalty": Bounds(False, 1.0, MAX_REPETITION_PENALTY, False,
                                 f"in [1, {MAX_REPETITION_PENALTY:g}] (1 = off)"),
}


def out_of_bounds(name: str, value: Any) -> str | None:
    """What the sampling value ``name`` must be (``SAMPLING_BOUNDS``' words) when ``value`` is not that, else
    None. A bool is not a number; NaN and the infinities fail every comparison or bound."""
    bounds = SAMPLING_BOUNDS[name]
    kind = numbers.Integral if bounds.integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        return bounds.words
    within = (value > bounds.low if bounds.low_open else value >= bounds.low) and (
        bounds.high is None or value <= bounds.high)
    return None if within else bounds.words
