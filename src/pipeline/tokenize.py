"""Stage `tokenize`: train the tokenizer on the training split and encode both splits (exit code 3).

    python -m src.pipeline.tokenize [--params params.yaml]

Memory stays flat whatever the corpus: the tokenizer learns from at most tokenizer.sample_mb of the training
text's lines (a seeded sample beyond), and the corpus is encoded in chunks on every core straight into the token
files (src/data/token_files.py).
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import CorpusName, SplitConfig, TokenizerConfig, TokenizerName, load_config
from src.data.corpus import read_index, split_books
from src.data.token_files import corpus_chunks, encode_corpus, usable_cores
from src.data.tokenizer import HeldOutCount, TokenizerError, sample_sentences, train_tokenizer
from src.pipeline.stage import StageError, missing_input, run_stage, stage_arguments

log = logging.getLogger(__name__)


def tokenize(split_cfg: SplitConfig, cfg: TokenizerConfig, corpus_name: CorpusName, tokenizer_name: TokenizerName, *,
             index_file: Path = paths.CORPUS_INDEX_FILE, metrics_file: Path = paths.TOKENIZER_METRICS,
             tokens_dir: Path = paths.TOKENS_DIR, processes: int | None = None) -> dict:
    corpus_file = corpus_name.file
    for needed in (corpus_file, index_file):
        if not needed.is_file():
            raise missing_input(needed, "download")
    try:
        # A map of the file, read only around the cuts: the split's and the chunks'.
        with corpus_file.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as corpus:
            splits = split_books(corpus, read_index(index_file), split_cfg.holdout_fraction)
            chunks = corpus_chunks(corpus, splits)
        sample = sample_sentences(corpus_file, [(c.start, c.end) for c in chunks if c.part == "train"],
                                  cfg.sample_mb * 1e6, cfg.seed)
    except (ValueError, KeyError, TypeError) as exc:  # JSON and UTF-8 decoding errors are ValueErrors
        raise not_fitting(corpus_file, index_file, exc) from None

    processor = train_tokenizer(sample, cfg, tokenizer_name.model, tokenizer_name.vocab)
    log.info("%s tokenizer learnt from %d lines; encoding %d chunks", cfg.model_type, len(sample), len(chunks))
    del sample
    try:
        counts = encode_corpus(corpus_file, tokenizer_name.model, splits, chunks, tokens_dir,
                               processes or usable_cores())
    except UnicodeDecodeError as exc:
        raise not_fitting(corpus_file, index_file, exc) from None
    held_out: dict[str, HeldOutCount] = {}
    for split, count in zip(splits, counts):
        held_out.setdefault(split.language, HeldOutCount()).add(count)
    metrics = {"vocab_size": processor.get_piece_size(),
               "held_out": {language: count.metrics() for language, count in held_out.items()}}
    write_json(metrics_file, {"tokenizer": metrics})  # one group per stage in `dvc exp show`: tokenizer.*
    log.info("%s tokenizer, %d pieces: %s", cfg.model_type, metrics["vocab_size"],
             {lang: m["tokens_per_character"] for lang, m in metrics["held_out"].items()})
    return metrics


def not_fitting(corpus_file: Path, index_file: Path, exc: Exception) -> StageError:
    return StageError(f"{corpus_file} and {index_file} do not fit together ({type(exc).__name__}: {exc}); "
                      f"rebuild them with `dvc repro --force download`")


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        tokenize(cfg.split, cfg.tokenizer, cfg.corpus_name, cfg.tokenizer_name)

    run_stage("tokenize", body, expected=(TokenizerError,))


if __name__ == "__main__":
    main()
