"""The one comparison of measured figures against a model's device budgets (RSS, peak memory, p95 latency).

The validate stage judges a bundle with it, and the CLI's --safety-mode strict judges each call.
"""

from __future__ import annotations

from typing import Mapping

BUDGETS = ("rss_mb", "peak_mb", "latency_p95_ms")  # what a model may use on a device


def check_budgets(figures: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, dict]:
    """Per budget: the measured ``value``, its ``limit`` and whether it ``passed`` (value <= limit)."""
    return {name: {"value": figures[name], "limit": limit, "passed": figures[name] <= limit}
            for name, limit in limits.items()}


def over_budget(verdicts: Mapping[str, dict]) -> list[str]:
    """``name value > limit`` for each budget that failed."""
    return [f"{name} {v['value']:g} > {v['limit']:g}" for name, v in verdicts.items() if not v["passed"]]
