"""Where each artifact of the pipeline lives, relative to the project root (dvc.yaml names the same).

The corpus and tokenizer files are named, as the quickstart names them, for what they hold: the corpus for its
languages (data/corpus_bilingual.txt), the tokenizer for those and its vocabulary (data/bilingual_8k.model).
dvc.yaml can read a param but not compute one, so params.yaml holds the names (``names.*``); ``derived_names``
says what they must be, and the config refuses names that no longer say what their files hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DATA = Path("data")
METRICS = Path("metrics")
BOOKS_DIR = Path("books")  # local books: dvc.yaml's download stage depends on the folder, hashed by DVC

PARAMS_CHECKED = DATA / "params_checked"

RAW_DIR = DATA / "raw"
CORPUS_INDEX_FILE = DATA / "corpus_index.json"
CORPUS_SOURCES = DATA / "corpus_sources.json"  # each book's title, author, origin, language, share and licence
CORPUS_METRICS = METRICS / "corpus.json"
LANGUAGES = DATA / "languages.json"  # per language: its held-out text's n-gram profile and opening words

TOKENIZER_METRICS = METRICS / "tokenizer.json"
TOKENS_DIR = DATA / "tokens"

CHECKPOINT_DIR = DATA / "checkpoints"  # the run's resume state: last.pt, best.pt (and what was set aside)
PERIODIC_CHECKPOINT = "checkpoint_epoch_{epoch}.pt"  # every train.checkpoint_every epochs, in PERIODIC_DIR
PERIODIC_DIR = DATA
BEST_MODEL = DATA / "best_model.pt"
FINAL_MODEL = DATA / "final_model.pt"
TRAINING_METRICS = DATA / "training_metrics.json"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_SPEED = METRICS / "train_speed.json"
TRAIN_PLOT = METRICS / "train_history.json"  # the training loss every train.log_every_steps steps
EVAL_PLOT = METRICS / "eval_history.json"  # each evaluation

BUNDLE_DIR = Path("dist") / "tinytransformer"

SAMPLES = METRICS / "samples.json"
VALIDATE_METRICS = METRICS / "validate.json"


def corpus_file(corpus_name: str) -> Path:
    """The corpus text: data/corpus_<names.corpus>.txt."""
    return DATA / f"corpus_{corpus_name}.txt"


def tokenizer_model(tokenizer_name: str) -> Path:
    """The sentencepiece model: data/<names.tokenizer>.model."""
    return DATA / f"{tokenizer_name}.model"


def tokenizer_vocab(tokenizer_name: str) -> Path:
    """Its vocabulary, a piece and its score a line: data/<names.tokenizer>.vocab."""
    return DATA / f"{tokenizer_name}.vocab"


def corpus_name(languages: Iterable[str]) -> str:
    """What a corpus in ``languages`` (ISO 639-1 codes) is called: one language's code, bilingual or multilingual."""
    distinct = sorted(set(languages))
    if len(distinct) == 1:
        return distinct[0]
    return "bilingual" if len(distinct) == 2 else "multilingual"


def tokenizer_name(corpus: str, vocab_size: int) -> str:
    """The tokenizer of corpus ``corpus`` with ``vocab_size`` pieces: bilingual_8k (bilingual_1500 off the thousands)."""
    size = f"{vocab_size // 1000}k" if vocab_size % 1000 == 0 else str(vocab_size)
    return f"{corpus}_{size}"


def derived_names(languages: Iterable[str], vocab_size: int) -> dict[str, str]:
    """The ``names.*`` params that say what the corpus and tokenizer of these languages and vocabulary hold."""
    corpus = corpus_name(languages)
    return {"corpus": corpus, "tokenizer": tokenizer_name(corpus, vocab_size)}


def not_found(path: Path | str, stage: str) -> str:
    """The message for an earlier stage's output that is not there."""
    return f"{path} not found: run `dvc repro {stage}` (or `dvc pull`) first"
