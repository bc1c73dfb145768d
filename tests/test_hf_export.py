"""The bundle as a Hugging Face model: `transformers` loads the directory as it is, offline and without remote code,
and computes our logits, our token ids and our greedy text (src/lib/runtime/hf_format.py, src/data/hf_tokenizer.py).

"Our logits" at position p: what TinyTransformer predicts after reading tokens 0..p as generation reads them: the
first context_length tokens at once (``forward``, every position), then one token at a time through the KV cache,
which slides past the context (each token sees itself and the context - 1 before it). The runtime computes the
same in numpy; `transformers` reads the whole prompt in one call, with Starcoder2's sliding window of the same size.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when transformers is imported: nothing here may reach the Hub

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from src import paths
from src.config import load_config
from src.data.corpus import range_text, read_index
from src.data.tokenizer import SPECIAL_TOKENS
from src.lib.runtime.encode import encode_text
from src.lib.runtime.model import load_bundle
from src.model.checkpoint import load_model
from src.model.transformer import KVCache
from src.pipeline.bundle import tokenizer_files
from src.pipeline.tokenize import tokenize
from src.pipeline.validate import prompts_for, read_languages
from tests.conftest import REPO_ROOT, TINY_PARAMS, run_module, write_params

LANGUAGES = ("en", "es")
GREEDY_TOKENS = 100  # past the tiny context (32): generation slides, in both
ROUND_TRIP = "Café crème, año, façade «¿Qué?» 日本語の文章 中文 🙂👍🏽 1234567890 3.14\ttab\tand\nnew\nlines\n\n  two  spaces "


def params_of(workdir: Path):
    return load_config(workdir / "params.yaml")


def bundle_of(workdir: Path) -> Path:
    return workdir / paths.BUNDLE_DIR


def held_out_texts(workdir: Path) -> dict[str, list[str]]:
    """Per language, the held-out text of each of its books (what the tokenize stage measures)."""
    texts: dict[str, list[str]] = {}
    for book in read_index(workdir / paths.CORPUS_INDEX_FILE)[1]:
        held_out = replace(book.validation, file=str(workdir / book.validation.file))
        texts.setdefault(book.language, []).append(range_text(held_out))
    return texts


def prompts(workdir: Path) -> dict[str, str]:
    """The validate stage's prompt for each corpus language."""
    return prompts_for(read_languages(workdir / paths.LANGUAGES), load_config(workdir / "params.yaml").validate)


def long_prompt(workdir: Path, language: str) -> list[int]:
    """Three contexts' worth of the language's held-out text, as sentencepiece's ids."""
    tokenizer = spm.SentencePieceProcessor(model_file=str(workdir / params_of(workdir).tokenizer_name.model))
    context = load_bundle(bundle_of(workdir)).config["context_length"]
    ids = encode_text(tokenizer, held_out_texts(workdir)[language][0][:20_000])
    assert len(ids) >= 3 * context
    return ids[:3 * context]


@torch.no_grad()
def our_logits(workdir: Path, ids: list[int]) -> np.ndarray:
    """(T, V): TinyTransformer's forward over the first context at once, then one token at a time, sliding."""
    model, _ = load_model(workdir / paths.BEST_MODEL)
    context = model.shape.context_length
    cache = KVCache(model.shape, 1, torch.float32, torch.device("cpu"))
    rows = [model(torch.tensor([ids[:context]]), cache)[0]]
    rows += [model(torch.tensor([[token]]), cache)[0] for token in ids[context:]]
    return torch.cat(rows).numpy()


def runtime_logits(bundle: Path, ids: list[int]) -> np.ndarray:
    """(T, V): the numpy runtime reading ``ids`` one at a time (its ring cache slides past the context)."""
    decoder = load_bundle(bundle).decoder()
    return np.stack([decoder.prefill(ids[:1]), *(decoder.step(token) for token in ids[1:])])


@torch.no_grad()
def hf_logits(bundle: Path, ids: list[int]) -> np.ndarray:
    """(T, V): `transformers` over all of ``ids`` in one call."""
    model = AutoModelForCausalLM.from_pretrained(bundle, trust_remote_code=False)
    assert type(model).__name__ == "Starcoder2ForCausalLM" and model.dtype == torch.float32
    return model(torch.tensor([ids])).logits[0].numpy()


def check_logits(workdir: Path, language: str) -> float:
    """The largest difference between `transformers`' logits and ours (and the runtime's) over a long prompt."""
    ids = long_prompt(workdir, language)
    theirs = hf_logits(bundle_of(workdir), ids)
    worst = max(float(np.abs(theirs - ours).max())
                for ours in (our_logits(workdir, ids), runtime_logits(bundle_of(workdir), ids)))
    assert worst <= 1e-4, (language, worst)
    return worst


def check_token_ids(workdir: Path, language: str, hf_dir: Path | None = None) -> tuple[int, int]:
    """(paragraphs, tokens) of the language's held-out text on which `transformers`' tokenizer (the bundle's, or
    the one in ``hf_dir``) gives our sentencepiece ids (``encode_text``): all of them (each book's held-out text
    whole, and each paragraph alone)."""
    ours = spm.SentencePieceProcessor(model_file=str(workdir / params_of(workdir).tokenizer_name.model))
    theirs = AutoTokenizer.from_pretrained(hf_dir or bundle_of(workdir), trust_remote_code=False)
    paragraphs = tokens = 0
    for text in held_out_texts(workdir)[language]:
        expected = encode_text(ours, text)
        assert theirs.encode(text, add_special_tokens=False) == expected, language
        tokens += len(expected)
        for paragraph in filter(None, text.split("\n\n")):
            assert theirs.encode(paragraph, add_special_tokens=False) == encode_text(ours, paragraph), paragraph
            paragraphs += 1
    return paragraphs, tokens


def check_round_trip(bundle: Path) -> None:
    """Accents, CJK, emoji (byte fallback), digits, tabs, newlines and runs of spaces come back as they were."""
    ours = load_bundle(bundle).tokenizer
    theirs = AutoTokenizer.from_pretrained(bundle, trust_remote_code=False)
    ids = theirs.encode(ROUND_TRIP, add_special_tokens=False)
    assert ids == ours.encode(ROUND_TRIP) and theirs.decode(ids) == ROUND_TRIP
    assert any(ours.is_byte(i) for i in ids)  # the emoji are spelled in bytes


def cli_greedy(workdir: Path, prompt: str) -> str:
    done = run_module("src.cli.minimal_llm", REPO_ROOT, "generate", "--bundle", str(bundle_of(workdir)),
                      "--prompt", prompt, "--temperature", "0", "--max_tokens", str(GREEDY_TOKENS))
    assert done.returncode == 0, done.stderr
    return done.stdout.removesuffix("\n")  # the prompt, the text, a newline


def check_greedy(workdir: Path, language: str, **sampling) -> tuple[str, str]:
    """(`transformers`' pipeline, our CLI): the same greedy text from the language's prompt."""
    prompt = prompts(workdir)[language]
    generate = pipeline("text-generation", model=str(bundle_of(workdir)), trust_remote_code=False)
    theirs = generate(prompt, max_new_tokens=GREEDY_TOKENS, **sampling)[0]["generated_text"]
    ours = cli_greedy(workdir, prompt)
    assert theirs == ours and len(ours) > len(prompt), (theirs, ours)
    return theirs, ours


@pytest.mark.parametrize("language", LANGUAGES)
def test_transformers_computes_our_logits_over_a_prompt_three_contexts_long(tiny_pipeline, language):
    check_logits(tiny_pipeline, language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_transformers_tokenizer_gives_sentencepieces_ids_on_every_held_out_text(tiny_pipeline, language):
    paragraphs, tokens = check_token_ids(tiny_pipeline, language)
    assert paragraphs > 50 and tokens > 5000


def test_the_default_tokenizer_gives_the_same_ids_on_every_default_books_whole_held_out_text(tiny_pipeline, tmp_path,
                                                                                            monkeypatch):
    """The default 8k unigram tokenizer, learnt from the default corpus as the tokenize stage learns it. Pride and
    Prejudice's held-out text (20,466 tokens) is where sentencepiece's own `encode` of the whole text, summing
    scores in single precision, once split "temper" te|m|per where the best path (and `tokenizers`) has te|mp|er."""
    workdir = tmp_path / "default"
    (workdir / "data").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", workdir / "params.yaml")
    cfg = params_of(workdir)
    shutil.copy(tiny_pipeline / paths.CORPUS_INDEX_FILE, workdir / paths.CORPUS_INDEX_FILE)
    shutil.copytree(tiny_pipeline / paths.RAW_DIR, workdir / paths.RAW_DIR)
    monkeypatch.chdir(workdir)
    tokenize(cfg.tokenizer, cfg.tokenizer_name)
    hf_dir = workdir / "hf"
    hf_dir.mkdir()
    for name, data in tokenizer_files(cfg.tokenizer_name.model.read_bytes(), SPECIAL_TOKENS).items():
        (hf_dir / name).write_bytes(data)
    for language in ("en", "es"):
        check_token_ids(workdir, language, hf_dir)


def test_transformers_tokenizer_decodes_what_it_encodes(tiny_pipeline):
    check_round_trip(bundle_of(tiny_pipeline))


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_text_generation_pipeline_writes_our_clis_greedy_text(tiny_pipeline, language):
    check_greedy(tiny_pipeline, language, do_sample=False)


def test_the_bundle_carries_the_hub_metadata_and_the_generation_defaults(tiny_pipeline):
    bundle = bundle_of(tiny_pipeline)
    model = AutoModelForCausalLM.from_pretrained(bundle, trust_remote_code=False)
    generation = model.generation_config
    assert (generation.do_sample, generation.temperature, generation.top_k, generation.top_p) == (True, 0.8, 40, 0.95)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (2, 3, 0)
    tokenizer = AutoTokenizer.from_pretrained(bundle, trust_remote_code=False)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (2, 3, 0, 1)
    assert tokenizer.decode([3, 2], skip_special_tokens=True) == ""
    card = (bundle / "README.md").read_text()
    assert "library_name: transformers\npipeline_tag: text-generation\n" in card


def readme_snippet() -> str:
    """The README's `transformers` code, as written."""
    section = (REPO_ROOT / "README.md").read_text().split("## Deploy: the bundle", 1)[1].split("\n## ", 1)[0]
    return next(code for code in re.findall(r"```python\n(.*?)```", section, re.DOTALL) if "transformers" in code)


def test_the_readmes_transformers_snippet_runs_as_written_offline(tiny_pipeline):
    done = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=tiny_pipeline, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(prompts(tiny_pipeline)["es"]), done.stdout


# --- another shape, another tokenizer, another corpus -------------------------------------------------------------

FRENCH = REPO_ROOT / "tests/fixtures/notes_fr.txt"
OTHER_SHAPE = {"vocab_size": 1200, "tokenizer.model_type": "bpe", "max_seq_length": 24, "model.n_layers": 3,
               "model.n_heads": 4, "model.d_model": 48, "model.d_ff": 80, "generation.temperature": 0}


@pytest.mark.slow
def test_a_bundle_of_another_shape_tokenizer_and_corpus_passes_the_same(tmp_path, book_server):
    """Three layers of four heads, width 48, context 24, a 1,200-piece BPE vocabulary, Alice and French notes,
    greedy by default: the same logits, ids, round trip and greedy text, with no sampling argument given."""
    write_params(tmp_path, {**TINY_PARAMS, **OTHER_SHAPE, "corpus.sources": [
        {"name": "alice", "url": f"{book_server.url}/pg11.txt", "language": "en",
         "sha256": "2bb7d5634ee2683a52fc0f016464124d35fc310f395f1b79d2ed0dc33c7f2a44"},
        {"name": "notes", "url": "books/notes_fr.txt", "language": "fr", "format": "plain"}]})
    (tmp_path / "books").mkdir()
    shutil.copy(FRENCH, tmp_path / "books/notes_fr.txt")
    for stage in ("download", "tokenize", "train", "bundle"):
        done = run_module(f"src.pipeline.{stage}", tmp_path)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr}"
    config = json.loads((bundle_of(tmp_path) / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["hidden_size"], config["vocab_size"],
            config["sliding_window"]) == (3, 4, 48, 1200, 24)
    assert json.loads((bundle_of(tmp_path) / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    for language in ("en", "fr"):
        check_logits(tmp_path, language)
        check_token_ids(tmp_path, language)
        check_greedy(tmp_path, language)
    check_round_trip(bundle_of(tmp_path))
