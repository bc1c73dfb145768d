"""The token dataset: its files, their meta, and the batches an epoch and an evaluation take."""

import numpy as np
import pytest
import torch

from src.data.dataset import BookTokens, SplitStats, TokenDataError, TokenSplit
from src.data.token_files import write_token_dataset


def test_a_token_meta_that_does_not_add_up_is_refused(tmp_path):
    ids = np.arange(100, dtype=np.uint16)
    write_token_dataset(tmp_path, {"validation": (ids, SplitStats(100, 300, (BookTokens("a", "en", 90, 300),)))})
    with pytest.raises(TokenDataError, match="does not describe"):
        TokenSplit(tmp_path, "validation")


def test_an_epoch_is_full_batches_of_distinct_windows(tmp_path):
    ids = np.arange(6000, dtype=np.uint16)  # a window's first id is its position
    write_token_dataset(tmp_path, {"train": (ids, SplitStats(len(ids), len(ids)))})
    split = TokenSplit(tmp_path, "train")
    windows = split.windows_per_epoch(16)
    assert windows % 16, "the test needs windows left over"
    left_out = []
    for epoch in (1, 2):
        batches = list(split.epoch_batches(16, 16, torch.Generator().manual_seed(epoch)))
        assert len(batches) == split.batches_per_epoch(16, 16) == windows // 16
        assert all(x.shape == (16, 16) and torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
        first_ids = torch.cat([x[:, 0] for x, _ in batches]).tolist()
        offset = first_ids[0] % 16  # every window of an epoch starts at offset + 16 * index
        used = {(first - offset) // 16 for first in first_ids}
        assert len(used) == len(first_ids) == windows - windows % 16
        left_out.append(set(range(windows)) - used)
    assert left_out[0] != left_out[1]  # another epoch leaves out other windows


def test_a_missing_token_file_names_the_stage_to_run(tmp_path):
    with pytest.raises(TokenDataError, match=r"train.bin not found: run `dvc repro tokenize` \(or `dvc pull`\) first"):
        TokenSplit(tmp_path, "train")


def test_evaluation_batches_cover_every_target_once_and_label_its_book(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)
    books = (BookTokens("a", "en", 600, 1800), BookTokens("b", "es", 400, 1500))
    write_token_dataset(tmp_path, {"validation": (ids, SplitStats(1000, 3300, books))})
    split = TokenSplit(tmp_path, "validation")
    targets, labels = [], []
    for inputs, batch_targets, book_of in split.evaluation_batches(16, 8):
        assert inputs.shape == batch_targets.shape == book_of.shape
        targets += batch_targets.flatten().tolist()
        labels += book_of.flatten().tolist()
    assert sorted(targets) == list(range(1, 1000))  # every token but the first is a target, once
    assert all(label == (0 if target < 600 else 1) for target, label in zip(targets, labels))
