"""The token dataset, written: each split's token ids, book by book, as the flat uint16 files dataset.py reads."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import sentencepiece as spm

from src.atomic import write_atomic, write_json
from src.data.corpus import BookSplit, part_text
from src.data.dataset import TOKEN_DTYPE, BookTokens, SplitStats
from src.data.tokenizer import EOS_ID


def encode_split(processor: spm.SentencePieceProcessor, corpus: bytes, splits: list[BookSplit],
                 part: str) -> tuple[np.ndarray, SplitStats]:
    """Token ids of one part ("train" or "validation") of every book, books separated by EOS."""
    if processor.get_piece_size() > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"a vocabulary of {processor.get_piece_size()} pieces does not fit uint16 token ids")
    ids: list[int] = []
    books = []
    for split in splits:
        start, end = getattr(split, part)
        book_ids = processor.encode(part_text(corpus, (start, end))) + [EOS_ID]
        ids.extend(book_ids)
        books.append(BookTokens(split.name, split.language, len(book_ids), end - start))
    return np.asarray(ids, dtype=TOKEN_DTYPE), SplitStats(len(ids), sum(b.bytes for b in books), tuple(books))


def write_token_dataset(directory: Path, parts: dict[str, tuple[np.ndarray, SplitStats]]) -> None:
    for name, (ids, _) in parts.items():
        write_atomic(directory / f"{name}.bin", ids.tobytes())
    meta = {name: asdict(stats) for name, (_, stats) in parts.items()}
    write_json(directory / "meta.json", meta)
