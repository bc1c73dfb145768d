"""Where each artifact of the pipeline lives, relative to the project root (dvc.yaml names the same)."""

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


def not_found(path: Path | str, stage: str) -> str:
    """The message for an earlier stage's output that is not there."""
    return f"{path} not found: run `dvc repro {stage}` (or `dvc pull`) first"
