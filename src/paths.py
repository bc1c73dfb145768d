"""Where each artifact of the pipeline lives, relative to the project root (dvc.yaml names the same).

The corpus and tokenizer files are named, as the quickstart names them, for what they hold: the corpus for its
languages (data/corpus_bilingual.txt), the tokenizer for those and its vocabulary (data/bilingual_8k.model).
dvc.yaml can read a param but not compute one, so params.yaml holds the names (``names.*``); ``derived_names``
says what they must be, and the config refuses names that no longer say what their files hold.
"""

from __future__ import annotations

import os
import stat
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

# What a fresh copy of the project needs to run the pipeline (the tests' and the benches' projects are such copies).
PROJECT_FILES = ("src", "scripts", "books", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
                 ".gitignore", "requirements.txt", "requirements-test.txt", "pyproject.toml")
FAILED_RUN = Path("failed")  # what a failed stage wrote in place of its metrics, kept there when restore replaces it


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


# What ``file_problem`` says of a path with nothing there, and of one that is there but not a file one can read.
NOT_FOUND = "not found"
NOT_REGULAR = "not a regular file"


def file_problem(path: Path | str) -> str | None:
    """What keeps ``path`` from being read as a file ("not found", "a directory, not a file", ...); None when it is
    a regular file. Never raises: a name too long or with a NUL byte is a problem like any other."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return NOT_FOUND
    except OSError as exc:
        return f"not usable ({exc.strerror or exc})"
    except ValueError:  # an embedded NUL byte
        return "not a valid path"
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    return None if stat.S_ISREG(mode) else NOT_REGULAR


def unusable_file(path: Path | str, stage: str, kind: str = "") -> str | None:
    """The message for an earlier stage's output ``path`` (a ``kind`` such as "checkpoint ") that cannot be read
    as a file: ``not_found``'s when nothing is there, else what is there instead; None when it can be read."""
    problem = file_problem(path)
    if problem is None:
        return None
    return not_found(f"{kind}{path}", stage) if problem == NOT_FOUND else f"{kind}{path} is {problem}"
