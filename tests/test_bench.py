"""The benchmarks run and report every figure (their numbers are measured by hand, never asserted on)."""

import json
import os
import re
import subprocess

import pytest

from tests.conftest import TINY_PARAMS, run_module


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


def test_time_to_loss_reports_steps_and_seconds_to_the_target_for_both_recipes(tiny_pipeline):
    done = run_module("bench.time_to_loss", tiny_pipeline, "--target", "50", "--eval-every", "2", "--max-steps", "4",
                      "--recipe", "optimizer=muon,schedule=wsd", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["precision"] in ("bf16", "fp32") and result["cpu"]
    for recipe in ("baseline", "recipe"):
        reached = result["recipes"][recipe]
        assert reached["reached"] and reached["steps"] == 2 and reached["seconds"] > 0, reached
    unreachable = run_module("bench.time_to_loss", tiny_pipeline, "--target", "0.1", "--eval-every", "2",
                             "--max-steps", "4", "--json")
    assert unreachable.returncode == 0, unreachable.stderr
    for recipe in json.loads(unreachable.stdout)["recipes"].values():
        assert not recipe["reached"] and [row["step"] for row in recipe["history"]] == [2, 4]


def test_time_to_loss_refuses_a_recipe_key_that_is_not_a_training_param(tiny_pipeline):
    done = run_module("bench.time_to_loss", tiny_pipeline, "--recipe", "model.d_model=64", "--json")
    assert done.returncode != 0 and "'model.d_model' is not a train.* key" in done.stderr


# Experiments committed before the metrics were grouped by stage hold an ungrouped metrics/train.json.
@pytest.mark.parametrize("grouped", [True, False])
def test_recipes_reads_each_experiments_history_for_steps_and_seconds_to_the_target(tmp_path, grouped):
    from bench.recipes import experiments, markdown, summary

    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    history = [{"step": 50, "seconds": 20.0, "validation_loss": 5.1}, {"step": 100, "seconds": 31.5, "validation_loss": 4.8},
               {"step": 150, "seconds": 43.0, "validation_loss": 4.6}]
    (repo / "metrics/train_history.json").write_text(json.dumps(history))
    train = {"best_validation_loss": 4.6, "environment": {"precision": "bf16"}}
    (repo / "metrics/train.json").write_text(json.dumps({"train": train} if grouped else train))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "exp"], check=True)
    rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    params = {"learning_rate": 0.006, "epochs": 8, "train": {"optimizer": "muon", "schedule": "wsd",
                                                             "warmup_steps": 30, "eval_every_steps": 50}}
    shown = [{"experiments": [{"revs": [{"name": "fast", "rev": rev,
                                         "data": {"params": {"params.yaml": {"data": params}}}}]}]}]
    assert [(name, r) for name, r, _ in experiments(shown)] == [("fast", rev)]
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        row = summary("fast", rev, params, target=4.84, budget_s=40)
    finally:
        os.chdir(cwd)
    assert (row["steps_to_target"], row["seconds_to_target"], row["best_loss_in_budget"]) == (100, 31.5, 4.8)
    assert row["train.optimizer"] == "muon" and row["training_seconds"] == 43.0
    assert "| fast | muon | wsd | 0.006 | 30 | 50 | 100 | 31.5 | 4.8 | 4.6 | 43.0 | bf16 |" in markdown([row], 4.84, 40)


def test_performance_page_renders_the_benchmarks_json_with_date_and_machine(tiny_pipeline, tmp_path):
    lines = [json.dumps({"page": {"machine": "Test CPU 9000", "threads": 2, "date": "2026-12-05"}})]
    for module, *args in (("bench.train_throughput", "--steps", "1", "--warmup", "1", "--rounds", "1", "--json"),
                          ("bench.inference", "--runs", "1", "--tokens", "8", "--json")):
        done = run_module(module, tiny_pipeline, *args)
        assert done.returncode == 0, done.stderr
        lines.append(done.stdout.strip())
    saved, page = tmp_path / "results.jsonl", tmp_path / "PERFORMANCE.md"
    saved.write_text("\n".join(lines) + "\n")
    done = run_module("bench.performance_page", tiny_pipeline, "--load", str(saved), "--out", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    throughput, inference = json.loads(lines[1]), json.loads(lines[2])
    assert "on 2026-12-05, on Test CPU 9000 (2 threads)" in text
    assert f"| project | {throughput['project']['ms_per_step']} |" in text
    assert throughput["attention_choice"] in text and throughput["precision_choice"] in text
    assert f"| tokens_per_sec | {inference['bundle']['tokens_per_sec']} | {inference['pytorch']['tokens_per_sec']} |" in text
    assert "## Time to a loss" not in text  # only what was measured
    refused = run_module("bench.performance_page", tiny_pipeline, "--only", "nope", "--load", str(saved))
    assert refused.returncode == 2 and "unknown benchmark nope" in refused.stderr


def test_performance_page_replaces_only_a_page_it_wrote(tmp_path):
    saved, notes = tmp_path / "results.jsonl", tmp_path / "notes.md"
    saved.write_text(json.dumps({"page": {"machine": "Test CPU", "threads": 2, "date": "2026-12-05"}}) + "\n")
    notes.write_text("# My notes\n")
    refused = run_module("bench.performance_page", tmp_path, "--load", str(saved), "--out", str(notes))
    assert refused.returncode == 2 and "notes.md is not a page this command wrote" in refused.stderr
    assert notes.read_text() == "# My notes\n"
    page = tmp_path / "PERFORMANCE.md"
    for _ in range(2):  # written, then replaced
        done = run_module("bench.performance_page", tmp_path, "--load", str(saved), "--out", str(page))
        assert done.returncode == 0, done.stderr
    (tmp_path / "data").mkdir()
    refused = run_module("bench.performance_page", tmp_path, "--load", str(saved), "--out", "data/PERFORMANCE.md")
    assert refused.returncode == 2 and "lies in the project's own data/" in refused.stderr


def test_a_varied_copy_shuffles_the_words_of_each_line_of_the_book_and_keeps_gutenbergs_markers():
    from bench.scale import shuffled_words

    text = (b"The Project Gutenberg eBook\r\nLanguage: English\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n"
            b"It is a truth universally acknowledged, that a single man\r\n\r\nin possession of a good fortune\r\n"
            b"   *** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nlicence text here\r\n")
    first, again, other = shuffled_words(text, 1), shuffled_words(text, 1), shuffled_words(text, 2)
    assert first == again and first != other and first != text
    head, body = text.split(b"EBOOK X ***\r\n", 1)[0], text.split(b"\r\n")
    assert first.startswith(head)
    assert first.endswith(b"\r\n   *** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nlicence text here\r\n")
    for original, shuffled in zip(body, first.split(b"\r\n")):
        assert sorted(original.split()) == sorted(shuffled.split())


def test_the_scale_section_replaces_its_variants_own_and_keeps_the_rest_of_the_page():
    from bench.scale import replace_section

    page = "# Performance\n\nintro\n\n## Corpus scale: books repeated\n\nold\n\n## Generation\n\ngen\n"
    replaced = replace_section(page, "## Corpus scale: books repeated\n\nnew table\n")
    assert replaced == "# Performance\n\nintro\n\n## Corpus scale: books repeated\n\nnew table\n\n## Generation\n\ngen\n"
    both = replace_section(replaced, "## Corpus scale: books varied\n\nother table\n")  # a variant of its own
    assert both == replaced + "\n## Corpus scale: books varied\n\nother table\n"


def test_scale_runs_each_stage_through_dvc_and_writes_its_table_into_the_page(shared_corpus, tmp_path):
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n\n## Generation\n\nkept\n")
    overrides = [arg for key, value in TINY_PARAMS.items() if not key.startswith("validate.")
                 for arg in ("--set", f"{key}={json.dumps(value)}")]
    done = run_module("bench.scale", tmp_path, "--sizes", "1", "--varied", "--max-steps", "3", "--eval-tokens", "512",
                      *overrides, "--workdir", str(tmp_path / "work"), "--out", str(page),
                      env={"TT_CORPUS_MIRROR": str(shared_corpus)}, timeout=900)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert text.startswith("# Performance\n\n## Generation\n\nkept\n\n## Corpus scale: books varied\n")
    assert "each copy's words shuffled" in text and "3 training steps" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 MB (3 books) |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 2.5 and int(cells[2].replace(",", "")) > 0
    for stage in cells[3:6]:  # wall time, then the peak RSS of its largest process and of its tree
        assert re.fullmatch(r"[\d.]+ s, [\d.]+ / [\d.]+ MB", stage), stage
    assert float(cells[6]) > 0 and float(cells[9]) > 2.5 and float(cells[10]) > 0
    assert not list((tmp_path / "work").iterdir())  # each size's project is removed
