"""The benchmarks run and report every figure (their numbers are measured by hand, never asserted on)."""

import json

import pytest

from tests.conftest import run_module


def test_train_throughput_reports_both_variants(tiny_pipeline):
    done = run_module("bench.train_throughput", tiny_pipeline, "--steps", "2", "--warmup", "1", "--rounds", "1",
                      "--keep-freed-memory", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["keep_freed_memory"] is True
    for variant in ("project", "reference_fp32_eager"):
        assert result[variant]["tokens_per_sec"] > 0 and result[variant]["steps"] == 2
        assert 0 < result[variant]["share_of_matmul_peak"]
    assert result["speedup"] == round(result["project"]["tokens_per_sec"]
                                      / result["reference_fp32_eager"]["tokens_per_sec"], 3)


def test_inference_reports_both_paths_side_by_side(tiny_pipeline):
    done = run_module("bench.inference", tiny_pipeline, "--runs", "2", "--tokens", "16", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for path in ("bundle", "pytorch"):
        for figure in ("latency_p50_ms", "latency_p95_ms", "time_to_first_token_ms", "tokens_per_sec", "rss_mb"):
            assert result[path][figure] > 0, (path, figure)
    assert result["runtime_speedup"] == round(result["bundle"]["tokens_per_sec"]
                                              / result["pytorch"]["tokens_per_sec"], 3)


@pytest.mark.slow
def test_train_ablation_times_every_variant(tiny_pipeline):
    done = run_module("bench.train_ablation", tiny_pipeline, "--steps", "1", "--warmup", "1", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["variants"]
    assert len(rows) == 9 and rows[7]["variant"].endswith("(the project's step)")
    assert all(row["ms_per_step"] > 0 for row in rows)
