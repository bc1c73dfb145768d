"""`python -m src.cli.minimal_llm generate` on a tiny trained model, as a user runs it."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.cli.minimal_llm import MAX_TOKENS, main
from src.config import TokenizerConfig
from src.data.tokenizer import train_tokenizer
from src.model.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import REPO_ROOT, run_module, write_params

CLI = "src.cli.minimal_llm"


CHECKPOINT = ("--model", "data/best_model.pt")  # the PyTorch path; without it the CLI runs dist/tinytransformer


def generate(workdir, *args):
    return run_module(CLI, workdir, "generate", *args)


def one_line_error(done) -> bool:
    """Exit 1 with one line of error, no traceback."""
    return done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


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
    (["--prompt", "hi", "--max_tokens", "0"], "--max_tokens must be between 1 and 100000"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be in [0, 10]"),
    (["--prompt", "hi", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--prompt", "hi", "--top_k", "-2"], "--top_k must be 0 (off) or more"),
    (["--prompt", "hi", "--model", "data/nothing_here.pt"], "run `dvc repro train` (or `dvc pull`) first"),
    (["--prompt", "hi", *CHECKPOINT, "--tokenizer", "data/nothing_here.model"],
     "run `dvc repro tokenize` (or `dvc pull`) first"),
    (["--prompt", "hi", "--bundle", "dist/nothing_here"], "dist/nothing_here not found: build a bundle"),
    (["--prompt", "hi", "--bundle", "data/corpus_bilingual.txt"],
     "data/corpus_bilingual.txt is not a directory: build a bundle"),
    (["--prompt", "hi", "--bundle", "b" * 5000], "cannot be read as a bundle (File name too long)"),
    (["--prompt", "hi", "--model", "data"], "checkpoint data is a directory, not a file"),
    (["--prompt", "hi", "--model", "/dev/null"], "checkpoint /dev/null is not a regular file"),
    (["--prompt", "hi", "--model", "m" * 5000 + ".pt"], "is not usable (File name too long)"),
    (["--prompt", "hi", "--model", "data/corpus_bilingual.txt"],
     "checkpoint data/corpus_bilingual.txt cannot be read: it is not a file torch.save wrote"),
    (["--prompt", "hi", *CHECKPOINT, "--tokenizer", "data"], "tokenizer model data is a directory, not a file"),
    (["--prompt", "hi", *CHECKPOINT, "--params", "missing.yaml"], "missing.yaml: not found"),
    (["--prompt", "hi", *CHECKPOINT, "--params", "data/corpus_bilingual.txt"],
     "data/corpus_bilingual.txt: not valid YAML"),
    (["--prompt", "x" * 2001, "--safety-mode", "strict"], "at most 2000 characters"),
    (["--prompt", "hi", "--max_tokens", "257", "--safety-mode", "strict"],
     "--max_tokens must be between 1 and 256 in --safety-mode strict"),
    (["--prompt", "hi", "--safety-mode", "strict", *["--stop", "x"] * 17], "at most 16 --stop, got 17"),
    (["--prompt", "hi", "--safety-mode", "strict", *["--stop", "x" * 120_000] * 4],
     "a --stop of at most 200 characters, got one of 120000"),
])
def test_bad_input_exits_1_with_a_clear_message(tiny_pipeline, args, message):
    done = generate(tiny_pipeline, *args)
    assert one_line_error(done) and message in done.stderr, done.stderr


def test_a_tokenizer_with_other_pieces_of_the_same_size_is_refused(tiny_pipeline, tmp_path):
    """Same vocabulary size, other pieces: it would load and generate garbage without the sha256 check."""
    lines = (tiny_pipeline / "data/corpus_bilingual.txt").read_text(encoding="utf-8").splitlines()[:20000]
    cfg = TokenizerConfig(vocab_size=1000, model_type="bpe", character_coverage=0.9995, threads=2, sample_mb=20, seed=1)
    other = train_tokenizer([line for line in lines if line.strip()], cfg, tmp_path / "bpe.model", tmp_path / "bpe.vocab")
    assert other.get_piece_size() == torch.load(tiny_pipeline / "data/best_model.pt")["shape"]["vocab_size"]
    done = generate(tiny_pipeline, "--prompt", "hi", *CHECKPOINT, "--tokenizer", str(tmp_path / "bpe.model"))
    assert one_line_error(done) and "is not the tokenizer" in done.stderr and "come from different runs" in done.stderr


def test_a_damaged_checkpoint_is_a_clear_error(tiny_copy):
    (tiny_copy / "data/best_model.pt").write_bytes(b"not a checkpoint")
    done = generate(tiny_copy, "--prompt", "hi", *CHECKPOINT)
    assert one_line_error(done) and "cannot be read" in done.stderr


def test_a_byte_changed_inside_the_models_weights_is_refused(tiny_copy):
    path = tiny_copy / "data/best_model.pt"
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.6)] ^= 0x01  # inside the tensors, which make up most of the file
    path.write_bytes(bytes(data))
    done = generate(tiny_copy, "--prompt", "hi", *CHECKPOINT)
    assert one_line_error(done) and "is damaged" in done.stderr


def test_a_recorded_shape_that_asks_for_gigabytes_is_refused(tiny_copy):
    state = load_checkpoint(tiny_copy / "data/best_model.pt")
    state["shape"]["vocab_size"] = 2**40
    save_checkpoint(tiny_copy / "data/best_model.pt", state)
    done = generate(tiny_copy, "--prompt", "hi", *CHECKPOINT)
    assert one_line_error(done) and "records an impossible model shape" in done.stderr


@pytest.mark.parametrize("damage", [b"", b"garbage" * 100, None])
def test_a_damaged_tokenizer_is_a_clear_error(tiny_copy, damage):
    path = tiny_copy / "data/bilingual_1k.model"
    path.write_bytes(path.read_bytes()[:5000] if damage is None else damage)
    done = generate(tiny_copy, "--prompt", "hi", *CHECKPOINT)
    assert one_line_error(done), done.stderr


@pytest.mark.parametrize("args, message", [
    (["--max_tokens", "abc"], "argument --max_tokens: invalid int value: 'abc'"),
    (["--seed", str(10**24)], "--seed must be between 0 and 2**64 - 1"),
    (["--seed", "-1"], "--seed must be between 0 and 2**64 - 1"),
    (["--threads", "0"], "--threads must be between 1 and"),
    (["--threads", "100000"], "--threads must be between 1 and"),
    (["--max_tokens", str(MAX_TOKENS + 1)], f"--max_tokens must be between 1 and {MAX_TOKENS}"),
    (["--temperature", "nan"], "--temperature must be in [0, 10]"),
    (["--top_p", "inf"], "--top_p must be in (0, 1]"),
    (["--repetition_penalty", "0.5"], "--repetition_penalty must be in [1, 10] (1 = off), got 0.5"),
    (["--repetition_penalty", "11"], "--repetition_penalty must be in [1, 10]"),
    (["--repetition_penalty", "nan"], "--repetition_penalty must be in [1, 10]"),
    (["--stop", "\n", "--stop", ""], "--stop must not be empty"),
    (["--stop"], "argument --stop: expected one argument"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_numbers_and_options_exit_1_with_one_line(tiny_pipeline, args, message):
    done = generate(tiny_pipeline, "--prompt", "hi", *args)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("args", [["--temperature", "1e-45"], ["--temperature", "5e-324"], ["--top_p", "1e-300"],
                                  ["--top_k", str(10**30)], ["--seed", str(2**64 - 1)]])
def test_extreme_but_allowed_numbers_generate(tiny_pipeline, args):
    done = generate(tiny_pipeline, "--prompt", "It is a truth", "--max_tokens", "8", "--json", *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["new_tokens"] >= 1


def test_a_prompt_that_is_not_utf8_is_refused(tiny_pipeline):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", CLI, "generate", "--prompt", b"caf\xe9 \xff"], cwd=tiny_pipeline,
                          env=env, capture_output=True, text=True)
    assert one_line_error(done) and "--prompt is not valid UTF-8 text" in done.stderr


def test_strict_mode_never_prints_the_prompts_control_characters(tiny_pipeline):
    prompt = "It is\x1b[2J\x1b]0;owned\x07 a truth\x9b"
    for extra in ([], ["--json"]):
        done = generate(tiny_pipeline, "--prompt", prompt, "--max_tokens", "5", "--safety-mode", "strict", *extra)
        assert done.returncode == 0, done.stderr
        assert not any(c in done.stdout for c in "\x1b\x07\x9b"), repr(done.stdout)
        assert "It is[2J]0;owned a truth" in (json.loads(done.stdout)["prompt"] if extra else done.stdout)


def test_plain_output_streams_and_ctrl_c_keeps_what_was_generated(tiny_pipeline):
    process = subprocess.Popen([sys.executable, "-m", CLI, "generate", "--prompt", "It is a truth", "--ignore_eos",
                                "--max_tokens", str(MAX_TOKENS)], cwd=tiny_pipeline,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    shown = b""
    deadline = time.monotonic() + 60
    while len(shown) < len("It is a truth") + 20 and time.monotonic() < deadline:
        shown += os.read(process.stdout.fileno(), 1024)
    assert process.poll() is None, "the text should arrive while it is being generated"
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 130 and b"Traceback" not in errors, errors
    assert (shown + rest).startswith(b"It is a truth") and (shown + rest).endswith(b"\n")


def test_the_streamed_text_is_the_text_json_reports(tiny_pipeline):
    args = ["--prompt", "En un lugar de la Mancha", "--max_tokens", "40", "--ignore_eos", "--seed", "7",
            "--temperature", "1.5", "--top_k", "0", "--top_p", "1", "--repetition_penalty", "1.3"]
    plain, as_json = generate(tiny_pipeline, *args), generate(tiny_pipeline, *args, "--json")
    assert plain.returncode == as_json.returncode == 0
    whole = json.loads(as_json.stdout)["text"]
    assert plain.stdout == "En un lugar de la Mancha" + whole + "\n"
    stop = whole[12:15]
    plain, as_json = (generate(tiny_pipeline, *args, "--stop", stop, *extra) for extra in ([], ["--json"]))
    assert plain.returncode == as_json.returncode == 0 and stop not in plain.stdout[len("En un lugar de la Mancha"):]
    assert plain.stdout == "En un lugar de la Mancha" + json.loads(as_json.stdout)["text"] + "\n"
    assert json.loads(as_json.stdout)["text"] == whole[:whole.index(stop)]


def test_strict_mode_enforces_the_budgets_of_the_bundle_or_of_the_params(tiny_copy):
    metrics = tiny_copy / "dist/tinytransformer/metrics.json"
    assert json.loads(metrics.read_text())["budgets"]["rss_mb"] == 64
    write_params(tiny_copy, {"validate.budgets.rss_mb": 1})  # a checkpoint's budgets are the params'
    done = generate(tiny_copy, "--prompt", "hi", "--max_tokens", "5", "--safety-mode", "strict", *CHECKPOINT)
    assert done.returncode == 5 and "over budget (rss_mb" in done.stderr
    done = generate(tiny_copy, "--prompt", "hi", "--max_tokens", "5", "--safety-mode", "strict")
    assert done.returncode == 0, done.stderr  # the bundle carries its own, and fits them


def test_strict_mode_strips_control_characters(tiny_pipeline):
    done = generate(tiny_pipeline, "--prompt", "En un lugar", "--max_tokens", "60", "--safety-mode", "strict",
                    "--ignore_eos", "--temperature", "1.5", "--top_k", "0", "--top_p", "1", "--json")
    assert done.returncode == 0, done.stderr
    text = json.loads(done.stdout)["text"]
    assert not any(ord(c) < 32 and c not in "\t\n" or 0x7f <= ord(c) <= 0x9f for c in text)


# Option values of every kind a careless or hostile user could type, as text.
NUMBERS = st.one_of(st.integers(), st.floats(), st.text(max_size=6)).map(str)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(st.text(max_size=30), st.just("\udcff\udcfe"), st.just("")),
       options=st.dictionaries(st.sampled_from(["--temperature", "--top_k", "--top_p", "--seed", "--threads",
                                                "--warmup_tokens", "--repetition_penalty"]), NUMBERS, max_size=4),
       stops=st.lists(st.one_of(st.text(max_size=3), st.just("\udcff")), max_size=2),
       max_tokens=st.one_of(st.integers(max_value=20), st.integers(min_value=MAX_TOKENS + 1),
                            st.text(max_size=6)).map(str),
       safety_mode=st.sampled_from(["off", "strict", "paranoid"]),
       flags=st.sets(st.sampled_from(["--json", "--ignore_eos"])),
       source=st.sampled_from(["bundle", "checkpoint"]))
def test_any_option_values_exit_with_a_documented_code_and_one_line_never_a_traceback(
        tiny_pipeline, prompt, options, stops, max_tokens, safety_mode, flags, source):
    """In-process, so that many inputs run in seconds (generation is kept to at most 20 tokens)."""
    model = (["--bundle", str(tiny_pipeline / "dist/tinytransformer")] if source == "bundle" else
             ["--model", str(tiny_pipeline / "data/best_model.pt"), "--tokenizer",
              str(tiny_pipeline / "data/bilingual_1k.model")])
    argv = ["generate", "--prompt", prompt, *model, "--params", str(tiny_pipeline / "params.yaml"),
            "--max_tokens", max_tokens, "--safety-mode", safety_mode, *sorted(flags)]
    for option, value in options.items():
        argv += [option, value]
    for stop in stops:
        argv += ["--stop", stop]
    stdout, stderr, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code
    finally:
        torch.set_num_threads(threads)
    # 5: strict mode's memory budget, which this test process (pytest, every test's imports) may well exceed.
    assert code in ((0, 1, 5) if safety_mode == "strict" else (0, 1)), (argv, code, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue()
    errors = [line for line in stderr.getvalue().splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == (0 if code == 0 else 1), (argv, stderr.getvalue())
