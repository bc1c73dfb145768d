import hashlib
import os
import time
from pathlib import Path

import pytest

from src.data.fetch import (ChecksumMismatch, DownloadError, Fetch, FetchPolicy, fetch_all, fetch_verified,
                            read_verified, resolve_location, sha256_of)

URL = "https://www.gutenberg.org/cache/epub/11/pg11.txt"


def policy(**changes):
    return FetchPolicy(**{"timeout_s": 5.0, "retries": 2, "backoff_s": 0.0, "max_bytes": 10_000_000,
                          "max_seconds": 60.0, **changes})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- mirror resolution ---------------------------------------------------------------------

def test_no_mirror_means_the_source_url():
    assert resolve_location(URL, "pg11.txt", None) == URL
    assert resolve_location(URL, "pg11.txt", "") == URL


@pytest.mark.parametrize("mirror", ["http://127.0.0.1:8000/books", "http://127.0.0.1:8000/books/"])
def test_http_mirror_joins_the_file_name(mirror):
    assert resolve_location(URL, "pg11.txt", mirror) == "http://127.0.0.1:8000/books/pg11.txt"


def test_directory_mirror(tmp_path):
    assert resolve_location(URL, "pg11.txt", str(tmp_path)) == str(tmp_path.resolve() / "pg11.txt")


@pytest.mark.parametrize("mirror, message", [
    ("ftp://mirror.example/books", "only http://, https:// or a local directory"),
    ("file:///srv/books", "only http://, https:// or a local directory"),
    ("/no/such/directory", "not a directory"),
])
def test_bad_mirrors_are_refused(mirror, message):
    with pytest.raises(DownloadError, match=message):
        resolve_location(URL, "pg11.txt", mirror)


# --- local mirror --------------------------------------------------------------------------

def test_fetch_from_a_directory_verifies_and_lands(shared_corpus, tmp_path):
    dest = tmp_path / "raw" / "pg11.txt"
    expected = sha(shared_corpus / "pg11.txt")
    assert fetch_verified(str(shared_corpus / "pg11.txt"), dest, expected, policy(), label="pg11.txt")
    assert sha(dest) == expected
    # Already there and verified: nothing is fetched again.
    assert not fetch_verified(str(shared_corpus / "missing.txt"), dest, expected, policy(), label="pg11.txt")


def test_checksum_mismatch_names_both_hashes_and_keeps_the_existing_file(shared_corpus, tmp_path):
    dest = tmp_path / "pg11.txt"
    dest.write_text("the file that was already here")
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as err:
        fetch_verified(str(shared_corpus / "pg11.txt"), dest, wrong, policy(), label="pg11.txt")
    message = str(err.value)
    assert "pg11.txt" in message and wrong in message and sha(shared_corpus / "pg11.txt") in message
    assert "set this book's sha256 in params.yaml" in message
    assert dest.read_text() == "the file that was already here"
    assert [p.name for p in tmp_path.iterdir()] == ["pg11.txt"]  # no temporary file left behind


def test_missing_file_in_a_directory_mirror(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        fetch_verified(str(tmp_path / "pg11.txt"), tmp_path / "out.txt", "0" * 64, policy(), label="pg11.txt")


def test_size_cap_applies_to_local_files(shared_corpus, tmp_path):
    with pytest.raises(DownloadError, match="over the 1000-byte cap"):
        fetch_verified(str(shared_corpus / "pg11.txt"), tmp_path / "o", "0" * 64, policy(max_bytes=1000), label="x")


# --- HTTP, against a real server on 127.0.0.1 -----------------------------------------------

def test_http_download(book_server, shared_corpus, tmp_path):
    dest = tmp_path / "pg2000.txt"
    expected = sha(shared_corpus / "pg2000.txt")
    assert fetch_verified(f"{book_server.url}/pg2000.txt", dest, expected, policy(), label="pg2000.txt")
    assert sha256_of(dest) == expected
    assert book_server.requests == ["/pg2000.txt"]


def test_http_404_fails_at_once(book_server, tmp_path):
    book_server.mode = "404"
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "x", "0" * 64, policy(), label="pg11.txt")
    assert len(book_server.requests) == 1  # a client error is not retried


def test_http_500_is_retried_then_given_up(book_server, tmp_path):
    book_server.mode = "500"
    slept = []
    with pytest.raises(DownloadError, match=r"giving up .* after 3 attempt\(s\): HTTP 500"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "x", "0" * 64, policy(backoff_s=0.5),
                       label="pg11.txt", sleep=slept.append)
    assert len(book_server.requests) == 3
    assert slept == [0.5, 1.0]  # exponential backoff
    assert not any(tmp_path.iterdir())


def test_http_flaky_server_recovers_on_retry(book_server, shared_corpus, tmp_path):
    book_server.mode, book_server.failures_left = "flaky", 2
    expected = sha(shared_corpus / "pg11.txt")
    assert fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "pg11.txt", expected, policy(), label="pg11")
    assert len(book_server.requests) == 3 and sha(tmp_path / "pg11.txt") == expected


def test_http_truncated_body_is_detected(book_server, tmp_path):
    book_server.mode = "truncated"
    with pytest.raises(DownloadError, match="truncated body"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "x", "0" * 64, policy(retries=1), label="pg11")
    assert len(book_server.requests) == 2


def test_http_slow_body_times_out(book_server, tmp_path):
    book_server.mode = "slow"
    with pytest.raises(DownloadError, match="giving up"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "x", "0" * 64, policy(timeout_s=0.3, retries=0),
                       label="pg11")


def test_http_size_cap_from_content_length(book_server, tmp_path):
    with pytest.raises(DownloadError, match="announces 173597 bytes, over the 1000-byte cap"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "x", "0" * 64, policy(max_bytes=1000), label="pg11")


def test_unreachable_server_is_retried(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_verified("http://127.0.0.1:9/pg11.txt", tmp_path / "x", "0" * 64, policy(retries=1), label="pg11",
                       sleep=lambda s: None)


# --- what must never hang, follow, or leave anything behind ----------------------------------------------

def test_a_server_that_drips_the_body_meets_the_deadline(book_server, tmp_path):
    """200 bytes a second with a correct Content-Length: every read returns in time, the file never ends."""
    book_server.mode = "drip"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"pg11.txt: not done within 2 s \(corpus.max_download_s\)"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "pg11.txt", "0" * 64,
                       policy(timeout_s=1.0, max_seconds=2.0), label="pg11.txt")
    assert time.monotonic() - started < 2.0 + 1.0 + 1.0  # the deadline, one read's timeout, slack
    assert not any(tmp_path.iterdir())


def test_a_stalled_server_is_retried_only_until_the_deadline(book_server, tmp_path):
    book_server.mode = "stall"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="pg11.txt: giving up"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "pg11.txt", "0" * 64,
                       policy(timeout_s=0.5, retries=10, backoff_s=0.5, max_seconds=2.0), label="pg11.txt")
    assert time.monotonic() - started < 2.0 + 0.5 + 1.0
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/pg11.txt", "file:///etc/passwd"])
def test_a_redirect_may_only_lead_to_http(book_server, tmp_path, target):
    book_server.mode, book_server.redirect_to = "redirect", target
    with pytest.raises(DownloadError, match="only http\\(s\\) redirects are followed|Redirection to url .* is not allowed"):
        fetch_verified(f"{book_server.url}/pg11.txt", tmp_path / "pg11.txt", "0" * 64, policy(), label="pg11.txt")
    assert not any(tmp_path.iterdir())


def test_a_redirect_to_http_is_followed(book_server, shared_corpus, tmp_path):
    expected = sha(shared_corpus / "pg11.txt")
    assert fetch_verified(f"{book_server.url}/moved/pg11.txt", tmp_path / "pg11.txt", expected, policy(), label="pg11")
    assert book_server.requests == ["/moved/pg11.txt", "/pg11.txt"]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_mirror_entry_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    entry = tmp_path / "mirror" / "pg11.txt"
    entry.parent.mkdir()
    os.mkfifo(entry) if kind == "fifo" else entry.mkdir()
    started = time.monotonic()
    with pytest.raises(DownloadError, match="is not a regular file|cannot be read"):
        fetch_verified(str(entry), tmp_path / "pg11.txt", "0" * 64, policy(), label="pg11.txt")
    assert time.monotonic() - started < 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["mirror"]  # no temporary file left either


def test_an_http_mirror_needs_a_host():
    with pytest.raises(DownloadError, match="an http\\(s\\) mirror needs a host"):
        resolve_location(URL, "pg11.txt", "http://")


@pytest.mark.parametrize("mirror", ["http://[::1", "https://[::1/books"])
def test_a_mirror_url_that_cannot_be_parsed_is_refused(mirror):
    with pytest.raises(DownloadError, match="not a valid URL \\(Invalid IPv6 URL\\)"):
        resolve_location(URL, "pg11.txt", mirror)


@pytest.mark.parametrize("url", ["http://127.0.0.1:port/pg11.txt", "http://[::1]:1x/pg11.txt"])
def test_a_url_no_request_can_reach_fails_at_once_not_after_retries(tmp_path, url):
    with pytest.raises(DownloadError, match="is not a valid URL"):
        fetch_verified(url, tmp_path / "pg11.txt", "0" * 64, policy(), label="pg11.txt")
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_path_too_long_for_the_file_system_is_not_a_directory():
    with pytest.raises(DownloadError, match="not a directory"):
        resolve_location(URL, "pg11.txt", "m" * 5000)


# --- several at once ----------------------------------------------------------------------------

BOOK_FILES = ("pg1342.txt", "pg11.txt", "pg2000.txt")


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_fetch_all_fetches_at_most_parallel_books_at_once(book_server, shared_corpus, tmp_path, parallel):
    book_server.mode = "late"  # each answer takes a while: the fetches overlap as much as they may
    fetches = [Fetch(f"{book_server.url}/{name}", tmp_path / name, sha(shared_corpus / name), name)
               for name in BOOK_FILES]
    assert fetch_all(fetches, policy(), parallel) == [True, True, True]
    assert book_server.most_at_once == parallel
    assert all(sha(tmp_path / name) == sha(shared_corpus / name) for name in BOOK_FILES)
    assert fetch_all(fetches, policy(), parallel) == [False, False, False]  # already there, verified


def test_the_first_failure_stops_the_other_fetches_at_once_and_leaves_nothing_behind(book_server, shared_corpus,
                                                                                    tmp_path):
    book_server.mode = "stall"  # half of each body, then nothing: only the timeout would end these reads
    raw = tmp_path / "raw"
    fetches = [Fetch(f"{book_server.url}/{name}", raw / name, sha(shared_corpus / name), name) for name in BOOK_FILES]
    fetches.insert(2, Fetch(str(tmp_path / "missing.txt"), raw / "missing.txt", "0" * 64, "missing.txt"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match="missing.txt: .* does not exist"):
        fetch_all(fetches, policy(timeout_s=30.0), 3)
    assert time.monotonic() - started < 10
    assert list(raw.iterdir()) == []  # no temporary file of the stalled downloads


def test_a_local_book_is_read_in_place_and_held_to_its_pin(shared_corpus, tmp_path):
    book = shared_corpus / "pg11.txt"
    assert read_verified(book, sha(book), "pg11.txt") == (book.read_bytes(), sha(book))
    assert read_verified(book, None, "pg11.txt")[1] == sha(book)
    with pytest.raises(ChecksumMismatch, match=f"sha256 mismatch for {book}"):
        read_verified(book, "0" * 64, "pg11.txt")
    with pytest.raises(DownloadError, match="is not a regular file"):
        read_verified(tmp_path, None, "a folder")
