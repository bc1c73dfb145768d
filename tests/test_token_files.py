import json

import numpy as np
import pytest
import sentencepiece as spm

from src.config import TokenizerConfig
from src.data.corpus import range_text
from src.data.gutenberg import read_book
from src.data.token_files import book_chunks, encode_books
from src.data.tokenizer import EOS_ID, train_tokenizer
from src.lib.runtime.encode import encode_text
from tests.conftest import index_books


@pytest.fixture(scope="module")
def encoded_corpus(shared_corpus, tmp_path_factory):
    """Three books' openings, each a file, indexed, and a 600-piece tokenizer learnt from their training text."""
    root = tmp_path_factory.mktemp("token_files")
    books = [(name, language, read_book((shared_corpus / file).read_bytes(), file).text[:size])
             for name, language, file, size in (("alice", "en", "pg11.txt", 60_000),
                                                ("pride", "en", "pg1342.txt", 90_000),
                                                ("quijote", "es", "pg2000.txt", 120_000))]
    splits = index_books(root, books, 0.1)
    lines = [line for s in splits for line in range_text(s.train).split("\n") if line.strip()]
    cfg = TokenizerConfig(vocab_size=600, model_type="unigram", character_coverage=0.9995, threads=1, sample_mb=20,
                          seed=3)
    train_tokenizer(lines, cfg, root / "tok.model", root / "tok.vocab")
    return root, splits


def encode(root, splits, name, processes, limit):
    out = root / name
    out.mkdir()
    counts = encode_books(root / "tok.model", splits, book_chunks(splits, limit), out, processes)
    return out, counts


def test_whole_parts_are_encoded_as_one_call_each_book_part_followed_by_eos(encoded_corpus):
    """Below the chunk size the files hold exactly each part's ids (``encode_text``), each followed by EOS."""
    root, splits = encoded_corpus
    out, counts = encode(root, splits, "whole", 2, 4 * 2**20)
    processor = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    meta = json.loads((out / "meta.json").read_text())
    for part in ("train", "validation"):
        expected = [i for s in splits for i in encode_text(processor, range_text(getattr(s, part))) + [EOS_ID]]
        assert (out / f"{part}.bin").read_bytes() == np.asarray(expected, dtype=np.uint16).tobytes()
        assert meta[part]["tokens"] == len(expected)
        assert [b["name"] for b in meta[part]["books"]] == ["alice", "pride", "quijote"]
        assert sum(b["tokens"] for b in meta[part]["books"]) == len(expected)
    assert [c.tokens for c in counts] == [len(encode_text(processor, range_text(s.validation))) for s in splits]


def test_chunked_encoding_is_the_files_of_whole_parts_for_any_number_of_processes_and_decodes_to_the_text(
        encoded_corpus):
    root, splits = encoded_corpus
    chunks = book_chunks(splits, 5_000)
    assert len(chunks) > 40 and all(c.text.end - c.text.start <= 5_000 for c in chunks)
    unchunked, _ = encode(root, splits, "unchunked", 1, 4 * 2**20)
    one, _ = encode(root, splits, "one_process", 1, 5_000)
    out, counts = encode(root, splits, "three_processes", 3, 5_000)
    for name in ("train.bin", "validation.bin", "meta.json"):
        assert (out / name).read_bytes() == (one / name).read_bytes() == (unchunked / name).read_bytes(), name
    processor = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    meta = json.loads((out / "meta.json").read_text())
    for part in ("train", "validation"):
        ids = np.fromfile(out / f"{part}.bin", dtype=np.uint16)
        assert len(ids) == meta[part]["tokens"]
        books = np.split(ids, np.cumsum([b["tokens"] for b in meta[part]["books"]])[:-1])
        for split, book in zip(splits, books):
            assert book[-1] == EOS_ID and EOS_ID not in book[:-1]
            assert processor.decode(book[:-1].tolist()) == range_text(getattr(split, part))
    assert [c.characters for c in counts] == [len(range_text(s.validation)) for s in splits]
