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
EVALUATION_SEED = 0  # of the sample of windows an evaluation scores under a token budget (not the run's seed)


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

    def epoch_batches(self, length: int, batch_size: int, generator: torch.Generator, start: int = 0):
        """One epoch: the windows of ``length`` (+1 target) tokens from a random offset, shuffled, in full batches,
        from batch ``start`` on (a run resumed within the epoch: the same order, its first batches skipped).

        Yields (inputs, targets) int64 tensors of shape (B, T). The fewer than B windows left over sit
        this epoch out (the next epoch's shuffle leaves out others): every batch has the same shape, so
        a compiled training step is compiled once, not a second time for a smaller last batch.
        """
        n_windows = self.windows_per_epoch(length)
        spare = len(self.ids) - 1 - n_windows * length
        offset = int(torch.randint(0, spare + 1, (1,), generator=generator))
        order = torch.randperm(n_windows, generator=generator).numpy()
        window_index = np.arange(length + 1)
        for first in range(start * batch_size, self.batches_per_epoch(length, batch_size) * batch_size, batch_size):
            starts = offset + order[first:first + batch_size] * length
            block = torch.from_numpy(self.ids[starts[:, None] + window_index].astype(np.int64))
            yield block[:, :-1], block[:, 1:]

    def book_ends(self) -> np.ndarray:
        """(books,) the position after each book's last token (one book spanning the split when none are recorded)."""
        if not self.stats.books:
            return np.array([len(self.ids)])
        return np.cumsum([book.tokens for book in self.stats.books])

    def evaluation_windows(self, length: int, max_tokens: int = 0) -> np.ndarray:
        """The start of each window an evaluation scores: every non-overlapping window from the start (the last may
        be short), or, when ``max_tokens`` is less than the split, a fixed sample of ``max_tokens // length`` full
        windows, in order. The sample depends on the split and the budget alone, never on a run's seed: every run
        scores the same tokens."""
        starts = np.arange(0, max(len(self.ids) - 1, 0), length)
        full = (len(self.ids) - 1) // length
        if not max_tokens or max_tokens >= len(self.ids) - 1 or full == 0:
            return starts
        chosen = torch.randperm(full, generator=torch.Generator().manual_seed(EVALUATION_SEED))
        return np.sort(starts[chosen[:max(max_tokens // length, 1)].numpy()])

    def evaluation_batches(self, length: int, batch_size: int, max_tokens: int = 0):
        """The windows of ``evaluation_windows``, ``batch_size`` full ones at a time, then the short one if any.

        Yields (inputs, targets, books) int64 tensors of shape (B, T): ``books`` is the book index of each target.
        Only the windows' tokens are read: memory does not grow with the split.
        """
        starts = self.evaluation_windows(length, max_tokens)
        ends = self.book_ends()
        full = starts[starts + length + 1 <= len(self.ids)]
        for first in range(0, len(full), batch_size):
            positions = full[first:first + batch_size, None] + np.arange(length + 1)
            yield self._window_tensors(positions, ends)
        if len(full) < len(starts):
            yield self._window_tensors(np.arange(starts[-1], len(self.ids))[None], ends)

    def _window_tensors(self, positions: np.ndarray, ends: np.ndarray):
        block = torch.from_numpy(self.ids[positions].astype(np.int64))
        books = torch.from_numpy(np.searchsorted(ends, positions[:, 1:], side="right").astype(np.int64))
        return block[:, :-1], block[:, 1:], books

    def targets_per_book(self) -> np.ndarray:
        """(books,) how many targets of the whole split each book holds (the split's first token is none)."""
        counts = np.diff(self.book_ends(), prepend=0)
        counts[0] -= 1
        return counts
