"""The Python API (src/inference/api.py): load once, generate and stream many times, the CLI's text exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.inference.api import MAX_TOKENS, GenerationError, Generator
from src.lib.runtime.sampling import Sampling
from tests.conftest import run_module

SPANISH = "En un lugar de la Mancha"
HOT = {"temperature": 1.5, "top_k": 0, "top_p": 1.0}


@pytest.fixture(scope="module")
def bundle(tiny_pipeline) -> Generator:
    return Generator.load(tiny_pipeline / "dist/tinytransformer")


@pytest.fixture(scope="module")
def checkpoint(tiny_pipeline) -> Generator:
    return Generator.load(tiny_pipeline / "data/best_model.pt", tokenizer=tiny_pipeline / "data/bilingual_1k.model",
                          params=tiny_pipeline / "params.yaml")


def test_load_takes_a_bundle_or_a_checkpoint(bundle, checkpoint, tiny_pipeline):
    assert bundle.model.runtime == "bundle" and checkpoint.model.runtime == "pytorch"
    assert bundle.model.source == tiny_pipeline / "dist/tinytransformer"
    assert bundle.model.defaults.temperature == checkpoint.model.defaults.temperature == 0.8


@pytest.mark.parametrize("source", ["bundle", "checkpoint"])
def test_one_model_generates_many_times_and_the_seed_decides_the_text(request, source):
    generator = request.getfixturevalue(source)
    texts = [generator.generate(SPANISH, max_tokens=30, seed=seed, ignore_eos=True, **HOT) for seed in (1, 2, 1)]
    assert texts[0] == texts[2] != texts[1] and all(texts)


def test_streamed_pieces_arrive_in_order_and_join_to_the_text(bundle):
    generation = bundle.stream(SPANISH, max_tokens=60, seed=3, ignore_eos=True, **HOT)
    pieces, shown = [], []
    for piece in generation:
        pieces.append(piece)
        shown.append(generation.text)  # everything released so far: the pieces until now, in order
    assert shown == ["".join(pieces[:n]) for n in range(1, len(pieces) + 1)]
    assert "".join(pieces) == generation.text == bundle.generate(SPANISH, max_tokens=60, seed=3, ignore_eos=True,
                                                                    **HOT)
    assert len(generation.tokens) == 60 and len(generation.times.token_latencies_ms) == 59
    assert generation.prompt_ids == bundle.model.tokenizer.encode(SPANISH)


def test_the_text_ends_exactly_before_a_stop_sequence(bundle):
    whole = bundle.generate(SPANISH, max_tokens=80, seed=4, ignore_eos=True, **HOT)
    stop = whole[20:23]
    cut = bundle.generate(SPANISH, max_tokens=80, seed=4, ignore_eos=True, stop=[stop, "not in the text"], **HOT)
    assert cut == whole[:whole.index(stop)] and bundle.generate(SPANISH, max_tokens=80, seed=4, ignore_eos=True,
                                                                stop=stop, **HOT) == cut  # one text or a list


def test_the_penalty_changes_what_a_greedy_model_repeats(bundle):
    plain = bundle.generate("It is a truth", max_tokens=80, temperature=0, ignore_eos=True)
    penalized = bundle.generate("It is a truth", max_tokens=80, temperature=0, ignore_eos=True, repetition_penalty=1.5)
    words = [text.split() for text in (plain, penalized)]
    assert len(set(words[1])) / len(words[1]) > len(set(words[0])) / len(words[0])


@pytest.mark.parametrize("source", ["bundle", "checkpoint"])
def test_the_api_and_the_cli_give_the_same_text_for_the_same_seed(request, tiny_pipeline, source):
    generator = request.getfixturevalue(source)
    options = {"max_tokens": 50, "seed": 11, "temperature": 1.2, "top_k": 0, "top_p": 0.95,
               "repetition_penalty": 1.2, "ignore_eos": True}
    stop = generator.generate(SPANISH, **options)[15:18]  # cuts the text short
    model = ["--bundle", "dist/tinytransformer"] if source == "bundle" else ["--model", "data/best_model.pt"]
    cli = run_module("src.cli.minimal_llm", tiny_pipeline, "generate", "--json", "--prompt", SPANISH, *model,
                     "--max_tokens", "50", "--seed", "11", "--temperature", "1.2", "--top_k", "0", "--top_p", "0.95",
                     "--repetition_penalty", "1.2", "--stop", stop, "--stop", "zz", "--ignore_eos")
    assert cli.returncode == 0, cli.stderr
    text = generator.generate(SPANISH, **options, stop=[stop, "zz"])
    assert json.loads(cli.stdout)["text"] == text and len(text) < 18


@pytest.mark.parametrize("options, message", [
    ({"max_tokens": 0}, f"max_tokens must be between 1 and {MAX_TOKENS}, got 0"),
    ({"max_tokens": "5"}, "max_tokens must be between 1"),
    ({"seed": -1}, "seed must be between 0 and 2**64 - 1"),
    ({"temperature": float("nan")}, "temperature must be in [0, 10] (0 = greedy)"),
    ({"top_k": 1.5}, "top_k must be 0 (off) or more"),
    ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"repetition_penalty": 0.5}, "repetition_penalty must be in [1, 10] (1 = off), got 0.5"),
    ({"repetition_penalty": 11}, "repetition_penalty must be in [1, 10]"),
    ({"stop": [""]}, "stop must not be empty"),
    ({"stop": ["ok", 3]}, "stop must be text or a list of texts"),
    ({"stop": "\udcff"}, "stop is not valid UTF-8 text"),
])
def test_options_out_of_bounds_are_refused_naming_the_option(bundle, options, message):
    with pytest.raises(GenerationError) as refused:
        bundle.generate(SPANISH, **options)
    assert message in str(refused.value)


@pytest.mark.parametrize("prompt, message", [("  ", "prompt is empty"), ("\udcff", "prompt is not valid UTF-8"),
                                             (None, "prompt must be text")])
def test_a_bad_prompt_is_refused(bundle, prompt, message):
    with pytest.raises(GenerationError, match=message):
        bundle.stream(prompt)


def test_a_missing_model_is_refused_saying_what_to_run(tmp_path):
    with pytest.raises(GenerationError, match="nothing not found: build a bundle"):
        Generator.load(tmp_path / "nothing")
    with pytest.raises(GenerationError, match=r"run `dvc repro train` \(or `dvc pull`\) first"):
        Generator.load(tmp_path / "nothing.pt")


def test_a_file_that_is_no_model_is_named_as_such_not_blamed_on_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/tokenizer.model here either
    Path("book.txt").write_text("Chapter 1\n\nIt was a dark and stormy night.\n")
    with pytest.raises(GenerationError, match="book.txt cannot be read: it is not a file torch.save wrote"):
        Generator.load("book.txt")
    with pytest.raises(GenerationError, match=r"is not usable \(File name too long\)"):
        Generator.load("a" * 5000 + ".pt")
    with pytest.raises(GenerationError, match=r"cannot be read as a bundle \(File name too long\)"):
        Generator.load("a" * 5000)


def test_params_given_must_be_there_and_valid_params_yaml_is_taken_where_it_exists(tiny_pipeline, tmp_path,
                                                                                   monkeypatch):
    model, tokenizer = tiny_pipeline / "data/best_model.pt", tiny_pipeline / "data/bilingual_1k.model"
    broken = tmp_path / "broken.yaml"
    broken.write_text("generation: {temperature: .nan}\n")
    for params, message in ((tmp_path / "missing.yaml", "missing.yaml: not found"),
                            (broken, "broken.yaml: missing key")):
        with pytest.raises(GenerationError, match=message):
            Generator.from_checkpoint(model, tokenizer, params=params)
    monkeypatch.chdir(tmp_path)  # no params.yaml: PyTorch's own defaults, no budgets
    implicit = Generator.from_checkpoint(model, tokenizer)
    assert implicit.model.defaults == Sampling() and implicit.model.budgets is None
    monkeypatch.chdir(tiny_pipeline)
    assert Generator.from_checkpoint(model, tokenizer).model.budgets["rss_mb"] == 64


def test_a_numpy_integer_is_a_valid_option(bundle):
    assert bundle.generate(SPANISH, max_tokens=np.int64(5), seed=np.uint64(2**64 - 1), ignore_eos=True)
