"""The data stages run as DVC runs them (`python -m ...`), with their documented exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, run_module, write_params


@pytest.fixture
def workdir(tmp_path):
    write_params(tmp_path)
    return tmp_path


def test_download_then_tokenize_from_the_loopback_server(workdir, book_server):
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": book_server.url})
    assert done.returncode == 0, done.stderr
    assert sorted(book_server.requests) == ["/pg11.txt", "/pg1342.txt", "/pg2000.txt"]
    corpus = (workdir / "data/corpus_bilingual.txt").read_text(encoding="utf-8")
    assert "It is a truth universally acknowledged" in corpus and "En un lugar de la Mancha" in corpus
    assert "PROJECT GUTENBERG" not in corpus.upper() and "\r" not in corpus
    metrics = json.loads((workdir / "metrics/corpus.json").read_text())["corpus"]
    assert metrics["bytes"] == len(corpus.encode()) and metrics["characters"] == len(corpus)
    assert metrics["books"] == 3 and 0.25 < metrics["languages"]["en"]["share"] < 0.35
    books = json.loads((workdir / "data/corpus_sources.json").read_text())["books"]  # the figures of each book
    assert [book["name"] for book in books] == ["pride_and_prejudice", "alice_in_wonderland", "don_quijote"]
    assert sum(book["bytes"] for book in books) + 2 * 2 + 1 == metrics["bytes"]
    assert sum(book["characters"] for book in books) + 2 * 2 + 1 == metrics["characters"]
    assert books[2]["share"] == metrics["languages"]["es"]["share"]
    assert sorted(p.name for p in (workdir / "data/raw").iterdir()) == [  # local books are never copied there
        "pg11.txt", "pg1342.txt", "pg2000.txt"]

    write_params(workdir, {"vocab_size": 2000})
    done = run_module("src.pipeline.tokenize", workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "data/bilingual_2k.model").is_file() and (workdir / "data/bilingual_2k.vocab").is_file()
    tokenizer = json.loads((workdir / "metrics/tokenizer.json").read_text())["tokenizer"]
    assert tokenizer["vocab_size"] == 2000
    assert set(tokenizer["held_out"]) == {"en", "es"}


def test_a_corpus_larger_than_text_file_mb_is_not_copied_and_tokenizes_to_the_same_files(workdir, book_server):
    """The books are the corpus: the tokens do not depend on whether the corpus text file holds a copy of them.
    Past corpus.text_file_mb that file only says where the text is, and data/ holds no copy of it."""
    mirror = {"TT_CORPUS_MIRROR": book_server.url}
    tokens = {}
    for text_file_mb in (100, 1):
        write_params(workdir, {"vocab_size": 2000, "corpus.text_file_mb": text_file_mb})
        for stage in ("download", "tokenize"):
            done = run_module(f"src.pipeline.{stage}", workdir, env=mirror)
            assert done.returncode == 0, done.stderr
        tokens[text_file_mb] = [(workdir / "data/tokens" / name).read_bytes()
                                for name in ("train.bin", "validation.bin", "meta.json")]
    assert tokens[1] == tokens[100]
    note = (workdir / "data/corpus_bilingual.txt").read_text(encoding="utf-8")
    assert note.startswith("This corpus holds 3,056,625 bytes of text in 3 books, more than corpus.text_file_mb = 1 MB")
    raw = sum(path.stat().st_size for path in (workdir / "data/raw").iterdir())
    others = sum(path.stat().st_size for path in (workdir / "data").rglob("*")
                 if path.is_file() and path.parent.name not in ("raw", "tokens"))
    assert others < 0.2 * raw  # the tokenizer, the index, the note: no second copy of the books' text
    metrics = json.loads((workdir / "metrics/corpus.json").read_text())["corpus"]
    assert metrics["bytes"] == 3_056_625  # the corpus's figures, whether its text file holds it or not


def test_a_book_changed_after_download_is_refused_by_tokenize(workdir, book_server):
    """The index points into the books' files: tokenize reads none that is not the file download indexed."""
    assert run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": book_server.url}).returncode == 0
    book = workdir / "data/raw/pg11.txt"
    original = book.read_bytes()
    for changed, said in ((original.replace(b"Alice", b"Alicia"), "is {size} bytes long, not 173597"),
                          (original.replace(b"Alice", b"ALICE"), "no longer has sha256 2bb7d5634ee2")):
        book.write_bytes(changed)
        done = run_module("src.pipeline.tokenize", workdir)
        assert done.returncode == 3 and "Traceback" not in done.stderr
        assert f"data/raw/pg11.txt {said.format(size=len(changed))}" in done.stderr
        assert "since the download stage indexed it: run `dvc repro download`" in done.stderr
        assert not (workdir / "data/tokens").exists()


def test_bad_param_exits_1_before_any_work(workdir, book_server):
    write_params(workdir, {"corpus.retries": -1})
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": book_server.url})
    assert done.returncode == 1
    assert "'corpus.retries' = -1 is out of range: must be an integer in [0, 20]" in done.stderr
    assert book_server.requests == [] and not (workdir / "data").exists()


def test_not_enough_disk_exits_1(workdir, book_server):
    write_params(workdir, {"corpus.min_free_disk_gb": 999_999})
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": book_server.url})
    assert done.returncode == 1 and "corpus.min_free_disk_gb" in done.stderr
    assert book_server.requests == []


def test_checksum_mismatch_exits_2_and_keeps_the_existing_corpus(workdir, shared_corpus):
    assert run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": str(shared_corpus)}).returncode == 0
    before = {p: p.read_bytes() for p in (workdir / "data").rglob("*") if p.is_file()}
    params = write_params(workdir)
    text = params.read_text().replace("2bb7d5634ee2683a52fc0f016464124d35fc310f395f1b79d2ed0dc33c7f2a44", "f" * 64)
    params.write_text(text)
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": str(shared_corpus)})
    assert done.returncode == 2
    assert "pg11.txt: sha256 mismatch" in done.stderr and "f" * 64 in done.stderr
    assert {p: p.read_bytes() for p in (workdir / "data").rglob("*") if p.is_file()} == before


def test_bad_mirror_exits_2(workdir):
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": "ftp://example.org/books"})
    assert done.returncode == 2 and "only http://, https:// or a local directory" in done.stderr


def test_404_exits_2(workdir, book_server):
    book_server.mode = "404"
    done = run_module("src.pipeline.download", workdir, env={"TT_CORPUS_MIRROR": book_server.url})
    assert done.returncode == 2 and "HTTP 404" in done.stderr


def test_tokenize_without_a_corpus_exits_1(workdir):
    done = run_module("src.pipeline.tokenize", workdir)
    assert done.returncode == 1 and "run `dvc repro download` (or `dvc pull`) first" in done.stderr


def test_sigterm_mid_download_exits_143_and_leaves_no_temporary_file(workdir, book_server):
    book_server.mode = "stall"  # half of each book, then nothing
    process = subprocess.Popen([sys.executable, "-m", "src.pipeline.download"], cwd=workdir,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TT_CORPUS_MIRROR": book_server.url},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    raw = workdir / "data/raw"
    deadline = time.monotonic() + 30
    while not (raw.is_dir() and any(p.name.endswith(".part") for p in raw.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None, "the download never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 143 and "download: terminated" in errors and "Traceback" not in errors
    assert list(raw.iterdir()) == []
