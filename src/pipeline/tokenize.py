"""Stage `tokenize`: train the tokenizer on the training split and encode both splits (exit code 3).

    python -m src.pipeline.tokenize [--params params.yaml]
"""

from __future__ import annotations

import logging
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import CorpusName, SplitConfig, TokenizerConfig, TokenizerName, load_config
from src.data.corpus import part_text, read_index, split_books
from src.data.token_files import encode_split, write_token_dataset
from src.data.tokenizer import TokenizerError, held_out_metrics, train_tokenizer
from src.pipeline.stage import StageError, missing_input, run_stage, stage_arguments

log = logging.getLogger(__name__)


def tokenize(split_cfg: SplitConfig, cfg: TokenizerConfig, corpus_name: CorpusName, tokenizer_name: TokenizerName, *,
             index_file: Path = paths.CORPUS_INDEX_FILE, metrics_file: Path = paths.TOKENIZER_METRICS,
             tokens_dir: Path = paths.TOKENS_DIR) -> dict:
    corpus_file = corpus_name.file
    for needed in (corpus_file, index_file):
        if not needed.is_file():
            raise missing_input(needed, "download")
    corpus = corpus_file.read_bytes()
    try:
        splits = split_books(corpus, read_index(index_file), split_cfg.holdout_fraction)
        lines = [line for s in splits for line in part_text(corpus, s.train).split("\n") if line.strip()]
        held_out: dict[str, str] = {}
        for s in splits:
            held_out[s.language] = held_out.get(s.language, "") + part_text(corpus, s.validation)
    except (ValueError, KeyError, TypeError) as exc:  # JSON and UTF-8 decoding errors are ValueErrors
        raise StageError(f"{corpus_file} and {index_file} do not fit together ({type(exc).__name__}: {exc}); "
                         f"rebuild them with `dvc repro --force download`") from None

    processor = train_tokenizer(lines, cfg, tokenizer_name.model, tokenizer_name.vocab)
    write_token_dataset(tokens_dir, {part: encode_split(processor, corpus, splits, part)
                                     for part in ("train", "validation")})
    metrics = {"vocab_size": processor.get_piece_size(),
               "held_out": held_out_metrics(processor, held_out)}
    write_json(metrics_file, {"tokenizer": metrics})  # one group per stage in `dvc exp show`: tokenizer.*
    log.info("%s tokenizer, %d pieces: %s", cfg.model_type, metrics["vocab_size"],
             {lang: m["tokens_per_character"] for lang, m in metrics["held_out"].items()})
    return metrics


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        tokenize(cfg.split, cfg.tokenizer, cfg.corpus_name, cfg.tokenizer_name)

    run_stage("tokenize", body, expected=(TokenizerError,))


if __name__ == "__main__":
    main()
