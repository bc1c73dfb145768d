"""`python -m src.cli.minimal_llm generate` on a tiny trained model, as a user runs it."""

import json

import pytest
import torch

from src.inference.generate import Sampling, next_token
from tests.conftest import run_module, write_params

CLI = "src.cli.minimal_llm"


def generate(workdir, *args):
    return run_module(CLI, workdir, "generate", *args)


def test_generates_text_and_reports_metrics_as_json(tiny_pipeline):
    done = generate(tiny_pipeline, "--prompt", "En un lugar de la Mancha", "--max_tokens", "20", "--json",
                    "--ignore_eos", "--seed", "4")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["prompt"] == "En un lugar de la Mancha" and answer["text"].strip()
    metrics = answer["metrics"]
    assert metrics["new_tokens"] == 20 and metrics["timed_tokens"] == 19
    for key in ("rss_mb", "peak_mb", "latency_p50_ms", "latency_p95_ms", "time_to_first_token_ms", "tokens_per_sec"):
        assert metrics[key] > 0, key
    assert metrics["latency_p50_ms"] <= metrics["latency_p95_ms"] and metrics["rss_mb"] <= metrics["peak_mb"]
    again = json.loads(generate(tiny_pipeline, "--prompt", "En un lugar de la Mancha", "--max_tokens", "20",
                                "--json", "--ignore_eos", "--seed", "4").stdout)
    assert again["text"] == answer["text"]  # same seed, same text


def test_plain_output_is_the_prompt_and_its_continuation(tiny_pipeline):
    done = generate(tiny_pipeline, "--prompt", "It is a truth", "--max_tokens", "10", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("It is a truth") and len(done.stdout) > len("It is a truth\n")


@pytest.mark.parametrize("args, message", [
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", "hi", "--max_tokens", "0"], "--max_tokens must be at least 1"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be in [0, 10]"),
    (["--prompt", "hi", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--prompt", "hi", "--top_k", "-2"], "--top_k must be 0 (off) or more"),
    (["--prompt", "hi", "--model", "data/nothing_here.pt"], "run `dvc repro train` (or `dvc pull`) first"),
    (["--prompt", "hi", "--tokenizer", "data/nothing_here.model"], "run `dvc repro tokenize` (or `dvc pull`) first"),
    (["--prompt", "x" * 2001, "--safety-mode", "strict"], "at most 2000 characters"),
    (["--prompt", "hi", "--max_tokens", "257", "--safety-mode", "strict"], "--max_tokens up to 256"),
])
def test_bad_input_exits_1_with_a_clear_message(tiny_pipeline, args, message):
    done = generate(tiny_pipeline, *args)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_a_tokenizer_from_another_run_is_refused(tiny_pipeline, tmp_path):
    other = tmp_path / "other.model"
    other.write_bytes((tiny_pipeline / "data/tokenizer.model").read_bytes())
    checkpoint = torch.load(tiny_pipeline / "data/best_model.pt", weights_only=True)
    checkpoint["shape"]["vocab_size"] += 1
    checkpoint["model"]["embed.weight"] = torch.cat([checkpoint["model"]["embed.weight"],
                                                     checkpoint["model"]["embed.weight"][:1]])
    checkpoint["model"]["head.weight"] = checkpoint["model"]["embed.weight"]
    model = tmp_path / "other.pt"
    torch.save(checkpoint, model)
    done = generate(tiny_pipeline, "--prompt", "hi", "--model", str(model), "--tokenizer", str(other))
    assert done.returncode == 1 and "come from different runs" in done.stderr


def test_a_damaged_checkpoint_is_a_clear_error(tiny_copy):
    (tiny_copy / "data/best_model.pt").write_bytes(b"not a checkpoint")
    done = generate(tiny_copy, "--prompt", "hi")
    assert done.returncode == 1 and "cannot be read" in done.stderr and "Traceback" not in done.stderr


def test_strict_mode_enforces_the_budgets(tiny_copy):
    write_params(tiny_copy, {"validate.budgets.rss_mb": 1})
    done = generate(tiny_copy, "--prompt", "hi", "--max_tokens", "5", "--safety-mode", "strict")
    assert done.returncode == 5 and "over budget (rss_mb" in done.stderr


def test_strict_mode_strips_control_characters(tiny_pipeline):
    done = generate(tiny_pipeline, "--prompt", "En un lugar", "--max_tokens", "60", "--safety-mode", "strict",
                    "--ignore_eos", "--temperature", "1.5", "--top_k", "0", "--top_p", "1", "--json")
    assert done.returncode == 0, done.stderr
    text = json.loads(done.stdout)["text"]
    assert not any(ord(c) < 32 and c not in "\t\n" or 0x7f <= ord(c) <= 0x9f for c in text)


def test_sampling_cuts():
    logits = torch.tensor([5.0, 4.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    assert next_token(logits, Sampling(temperature=0), generator) == 0
    assert {next_token(logits, Sampling(1.0, top_k=2), generator) for _ in range(200)} == {0, 1}
    # top_p 0.5: the most likely token alone already holds more than half the mass.
    assert {next_token(logits, Sampling(1.0, top_p=0.5), generator) for _ in range(50)} == {0}
