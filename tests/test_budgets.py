"""The one budget comparison, shared by the validate stage and the CLI's --safety-mode strict."""

from src.lib.runtime.budgets import check_budgets, over_budget


def test_each_budget_gets_its_value_limit_and_verdict_and_a_value_at_the_limit_passes():
    verdicts = check_budgets({"rss_mb": 64.0, "peak_mb": 81.5, "latency_p95_ms": 0.7, "tokens_per_sec": 900},
                             {"rss_mb": 64, "peak_mb": 80, "latency_p95_ms": 250})
    assert verdicts == {"rss_mb": {"value": 64.0, "limit": 64, "passed": True},
                        "peak_mb": {"value": 81.5, "limit": 80, "passed": False},
                        "latency_p95_ms": {"value": 0.7, "limit": 250, "passed": True}}
    assert over_budget(verdicts) == ["peak_mb 81.5 > 80"]
    assert over_budget(check_budgets({"rss_mb": 1.0}, {"rss_mb": 2})) == []
