"""Stage `tokenize`: train the tokenizer on the training split and encode both splits (exit code 3).

    python -m src.pipeline.tokenize [--params params.yaml]

The books are read in place, through the corpus index (src/data/corpus.py), after checking that each file is
still the one the download stage indexed. Memory stays flat whatever the corpus: the tokenizer learns from at
most tokenizer.sample_mb of the training text's lines (a seeded sample beyond), and the books are encoded in
chunks on every core straight into the token files (src/data/token_files.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import TokenizerConfig, TokenizerName, load_config
from src.data.corpus import changed_file, range_text, read_index
from src.data.token_files import book_chunks, encode_books, usable_cores
from src.data.tokenizer import HeldOutCount, TokenizerError, sample_sentences, train_tokenizer
from src.pipeline.stage import StageError, missing_input, run_stage, stage_arguments

log = logging.getLogger(__name__)


def tokenize(cfg: TokenizerConfig, tokenizer_name: TokenizerName, *, index_file: Path = paths.CORPUS_INDEX_FILE,
             metrics_file: Path = paths.TOKENIZER_METRICS, tokens_dir: Path = paths.TOKENS_DIR,
             processes: int | None = None) -> dict:
    if not index_file.is_file():
        raise missing_input(index_file, "download")
    try:
        files, splits = read_index(index_file)
        for book_file in files:
            if problem := changed_file(book_file):
                raise StageError(f"{problem} since the download stage indexed it: run `dvc repro download`")
        chunks = book_chunks(splits)
        sample = sample_sentences((range_text(c.text) for c in chunks if c.part == "train"),
                                  sum(s.train_bytes for s in splits), cfg.sample_mb * 1e6, cfg.seed)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON and UTF-8 decoding errors are ValueErrors
        raise not_fitting(index_file, exc) from None

    processor = train_tokenizer(sample, cfg, tokenizer_name.model, tokenizer_name.vocab)
    log.info("%s tokenizer learnt from %d lines; encoding %d chunks", cfg.model_type, len(sample), len(chunks))
    del sample
    try:
        counts = encode_books(tokenizer_name.model, splits, chunks, tokens_dir, processes or usable_cores())
    except (UnicodeDecodeError, OSError) as exc:
        raise not_fitting(index_file, exc) from None
    held_out: dict[str, HeldOutCount] = {}
    for split, count in zip(splits, counts):
        held_out.setdefault(split.language, HeldOutCount()).add(count)
    metrics = {"vocab_size": processor.get_piece_size(),
               "held_out": {language: count.metrics() for language, count in held_out.items()}}
    write_json(metrics_file, {"tokenizer": metrics})  # one group per stage in `dvc exp show`: tokenizer.*
    log.info("%s tokenizer, %d pieces: %s", cfg.model_type, metrics["vocab_size"],
             {lang: m["tokens_per_character"] for lang, m in metrics["held_out"].items()})
    return metrics


def not_fitting(index_file: Path, exc: Exception) -> StageError:
    return StageError(f"{index_file} does not fit the books it indexes ({type(exc).__name__}: {exc}); rebuild it "
                      f"with `dvc repro --force download`")


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        tokenize(cfg.tokenizer, cfg.tokenizer_name)

    run_stage("tokenize", body, expected=(TokenizerError,))


if __name__ == "__main__":
    main()
