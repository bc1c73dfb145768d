"""The token dataset, read: each split's token ids as a flat uint16 file through a memmap, and its batches.

Books are joined with an end-of-sequence id between them (src/data/token_files.py writes them). Training draws
random contiguous windows; validation walks fixed, non-overlapping windows from the start so its loss is
comparable across runs. Part of the recipe a checkpoint's fingerprint hashes: it decides the data order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.paths import not_found

TOKEN_DTYPE = np.uint16


class TokenDataError(ValueError):
    """The token dataset is missing, damaged, or too small for what is asked of it."""


@dataclass(frozen=True)
class BookTokens:
    """One book's part of a split: its tokens (the EOS after it included) and the bytes of its text."""
    name: str
    language: str
    tokens: int
    bytes: int


@dataclass(frozen=True)
class SplitStats:
    tokens: int
    bytes: int  # UTF-8 bytes of the text behind the tokens: the denominator of bits per byte
    books: tuple[BookTokens, ...] = ()  # in the order of the tokens

    @classmethod
    def from_dict(cls, stats: dict) -> "SplitStats":
        return cls(stats["tokens"], stats["bytes"], tuple(BookTokens(**book) for book in stats.get("books", ())))


class TokenSplit:
    """One split's ids (memmapped) and its stats."""

    def __init__(self, directory: Path, name: str):
        path, meta = Path(directory) / f"{name}.bin", Path(directory) / "meta.json"
        if not path.is_file() or not meta.is_file():
            raise TokenDataError(not_found(path if not path.is_file() else meta, "tokenize"))
        try:
            self.stats = SplitStats.from_dict(json.loads(meta.read_text(encoding="utf-8"))[name])
            self.ids = np.memmap(path, dtype=TOKEN_DTYPE, mode="r") if path.stat().st_size else np.zeros(0, TOKEN_DTYPE)
        except (ValueError, KeyError, TypeError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise TokenDataError(f"{directory} is damaged ({type(exc).__name__}: {exc}): rebuild it with "
                                 f"`dvc repro --force tokenize`") from None
        if self.stats.books and sum(book.tokens for book in self.stats.books) != len(self.ids):
            raise TokenDataError(f"{meta} does not describe {path} ({len(self.ids)} tokens): rebuild them with "
                                 f"`dvc repro --force tokenize`")

    def __len__(self) -> int:
        return len(self.ids)

    def windows_per_epoch(self, length: int) -> int:
        return (len(self.ids) - 1) // length

    def batches_per_epoch(self, length: int, batch_size: int) -> int:
        return self.windows_per_epoch(length) // batch_size

    def epoch_batches(self, length: int, batch_size: int, generator: torch.Generator):
        """One epoch: the windows of ``length`` (+1 target) tokens from a random offset, shuffled, in full batches.

        Yields (inputs, targets) int64 tensors of shape (B, T). The fewer than B windows left over sit
        this epoch out (the next epoch's shuffle leaves out others): every batch has the same shape, so
        a compiled training step is compiled once, not a second time for a smaller last batch.
        """
        n_windows = self.windows_per_epoch(length)
        spare = len(self.ids) - 1 - n_windows * length
        offset = int(torch.randint(0, spare + 1, (1,), generator=generator))
        order = torch.randperm(n_windows, generator=generator).numpy()
        window_index = np.arange(length + 1)
        for first in range(0, self.batches_per_epoch(length, batch_size) * batch_size, batch_size):
            starts = offset + order[first:first + batch_size] * length
            block = torch.from_numpy(self.ids[starts[:, None] + window_index].astype(np.int64))
            yield block[:, :-1], block[:, 1:]

    def book_of_tokens(self) -> torch.Tensor:
        """(len,) the index in ``stats.books`` of the book each token belongs to (all 0 when none are recorded)."""
        if not self.stats.books:
            return torch.zeros(len(self.ids), dtype=torch.int64)
        counts = torch.tensor([book.tokens for book in self.stats.books])
        return torch.repeat_interleave(torch.arange(len(counts)), counts)

    def evaluation_batches(self, length: int, batch_size: int):
        """Fixed, non-overlapping windows covering every token once as a target; the last may be short.

        Yields (inputs, targets, books) of shape (B, T): ``books`` is the book index of each target.
        """
        ids = torch.from_numpy(np.asarray(self.ids, dtype=np.int64))
        book_of = self.book_of_tokens()
        starts = list(range(0, len(ids) - 1, length))
        full = [s for s in starts if s + length + 1 <= len(ids)]
        for first in range(0, len(full), batch_size):
            chunk = full[first:first + batch_size]
            block = torch.stack([ids[s:s + length + 1] for s in chunk])
            yield block[:, :-1], block[:, 1:], torch.stack([book_of[s + 1:s + length + 1] for s in chunk])
        if len(full) < len(starts):
            tail = ids[starts[-1]:]
            yield tail[None, :-1], tail[None, 1:], book_of[starts[-1] + 1:][None]
