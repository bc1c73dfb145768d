"""Where each artifact of the pipeline lives, relative to the project root (dvc.yaml names the same)."""

import os
import stat
from pathlib import Path

DATA = Path("data")
METRICS = Path("metrics")

PARAMS_CHECKED = DATA / "params_checked"

LOCAL_BOOKS = DATA / "local_books.json"  # the sha256 of each local book file named in corpus.sources
RAW_DIR = DATA / "raw"
CORPUS_FILE = DATA / "corpus.txt"
CORPUS_INDEX_FILE = DATA / "corpus_index.json"
CORPUS_SOURCES = DATA / "corpus_sources.json"  # each book's title, author, origin, language, share and licence
CORPUS_METRICS = METRICS / "corpus.json"
LANGUAGES = DATA / "languages.json"  # per language: its held-out text's n-gram profile and opening words

TOKENIZER_MODEL = DATA / "tokenizer.model"
TOKENIZER_VOCAB = DATA / "tokenizer.vocab"
TOKENIZER_METRICS = METRICS / "tokenizer.json"
TOKENS_DIR = DATA / "tokens"

CHECKPOINT_DIR = DATA / "checkpoints"
BEST_MODEL = DATA / "best_model.pt"
FINAL_MODEL = DATA / "final_model.pt"
TRAINING_METRICS = DATA / "training_metrics.json"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_SPEED = METRICS / "train_speed.json"
TRAIN_PLOT = METRICS / "train_history.json"

BUNDLE_DIR = Path("dist") / "tinytransformer"

SAMPLES = METRICS / "samples.json"
VALIDATE_METRICS = METRICS / "validate.json"

FAILED_RUN = Path("failed")  # what a failed stage wrote in place of its metrics, kept there when restore replaces it


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
