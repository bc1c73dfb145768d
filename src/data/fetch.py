"""Fetch a file over HTTP(S) or from a local path or mirror, verified by its pinned sha256 before it lands.

Every way a download can go wrong ends in a DownloadError with nothing left behind: a server that
answers slowly forever meets ``max_seconds`` (checked between reads, each of which waits at most
``timeout_s``), a redirect may only lead to another http(s) URL, and a mirror entry must be a regular
file (a FIFO or a device would block or never end). ``fetch_all`` runs several fetches at once, each with
its own retries and deadline; the first failure stops the others. ``read_verified`` reads a local book in
place, held to its pin, copying it nowhere.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import quote

from tqdm import tqdm

from src.atomic import remove_leftovers, replacing

log = logging.getLogger(__name__)

MIRROR_ENV = "TT_CORPUS_MIRROR"
_CHUNK = 1 << 16
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USER_AGENT = "TinyTransformer-pipeline/1.0"


class DownloadError(RuntimeError):
    """The file could not be fetched; what was already on disk is untouched."""


class ChecksumMismatch(DownloadError):
    pass


class _Transient(Exception):
    """A failure worth another attempt (timeout, 5xx, connection reset, truncated body)."""


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float  # the longest wait for the server (connecting, then each read)
    retries: int
    backoff_s: float  # the wait before retry n is backoff_s * 2 ** (n - 1)
    max_bytes: int
    max_seconds: float  # the longest one file may take, every attempt and wait included


class _Deadline:
    """The time one file may take, and the signal that another fetch of the batch failed (``stop``)."""

    def __init__(self, seconds: float, label: str, stop: threading.Event | None = None):
        self.seconds, self.label, self.stop = seconds, label, stop
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise DownloadError(f"{self.label}: stopped, another download failed")
        if self.left() <= 0:
            raise DownloadError(f"{self.label}: not done within {self.seconds:g} s (corpus.max_download_s)")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another http(s) URL (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.startswith(("http://", "https://")):
            raise DownloadError(f"{req.full_url} redirects to {newurl!r}: only http(s) redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def resolve_location(url: str, file_name: str, mirror: str | None) -> str:
    """Where the bytes come from: the source URL, or ``<mirror>/<file_name>`` when a mirror is set.

    A mirror is an http(s) base URL or a local directory; any other scheme is refused.
    """
    if not mirror:
        return url
    check_mirror(mirror)
    if mirror.startswith(("http://", "https://")):
        return f"{mirror.rstrip('/')}/{quote(file_name)}"
    return str(Path(mirror).expanduser().resolve() / file_name)


def check_mirror(mirror: str) -> None:
    """Refuse a mirror that is neither an http(s) base URL with a host nor an existing local directory."""
    if mirror.startswith(("http://", "https://")):
        try:
            host = urllib.parse.urlparse(mirror).netloc
        except ValueError as exc:  # "Invalid IPv6 URL"
            raise DownloadError(f"{MIRROR_ENV}={mirror!r}: not a valid URL ({exc})") from None
        if not host:
            raise DownloadError(f"{MIRROR_ENV}={mirror!r}: an http(s) mirror needs a host")
    elif _SCHEME.match(mirror):
        raise DownloadError(f"{MIRROR_ENV}={mirror!r}: only http://, https:// or a local directory are accepted")
    elif not _is_dir(Path(mirror).expanduser()):
        raise DownloadError(f"{MIRROR_ENV}={mirror!r}: not a directory")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system: no directory of that name
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_regular_file(path: Path, label: str) -> BinaryIO:
    """``path`` opened for reading, refused with a DownloadError unless it is an existing regular file."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the entry is checked once it is open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DownloadError(f"{label}: {path} does not exist") from None
    except OSError as exc:
        raise DownloadError(f"{label}: {path} cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DownloadError(f"{label}: {path} is not a regular file")
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def local_sha256(path: Path, label: str) -> str:
    """The sha256 of a local source file (a regular file, or a DownloadError)."""
    with open_regular_file(path, label) as f:
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(label: str, location: str, expected: str, actual: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"{label}: sha256 mismatch for {location}\n  expected {expected}\n  actual   {actual}\n"
        f"If upstream published a new version on purpose, check its text and set this book's "
        f"sha256 in params.yaml (corpus.sources) to {actual}.")


def fetch_verified(location: str, dest: Path, expected_sha256: str | None, policy: FetchPolicy,
                   *, label: str, sleep: Callable[[float], None] = time.sleep,
                   stop: threading.Event | None = None) -> bool:
    """Make ``dest`` hold the bytes at ``location`` whose sha256 is ``expected_sha256`` (None: any bytes).

    Returns False when ``dest`` already held the pinned bytes (nothing fetched). The bytes go to a
    temporary file beside ``dest`` and replace it only once their hash matches, so a failed or wrong
    download never touches a file that was already there. Setting ``stop`` ends the fetch at its next read.
    """
    if expected_sha256 is not None and dest.is_file() and sha256_of(dest) == expected_sha256:
        return False
    deadline = _Deadline(policy.max_seconds, label, stop)
    with replacing(dest) as part:
        for attempt in range(policy.retries + 1):
            try:
                actual = _copy(location, part, policy, label, deadline)
                break
            except _Transient as exc:
                wait = policy.backoff_s * 2**attempt
                if attempt == policy.retries or wait >= deadline.left():
                    raise DownloadError(
                        f"{label}: giving up on {location} after {attempt + 1} attempt(s): {exc}") from None
                log.warning("%s: attempt %d failed (%s); retrying in %.1fs", label, attempt + 1, exc, wait)
                sleep(wait)
                deadline.check()
        if expected_sha256 is not None and actual != expected_sha256:
            raise _mismatch(label, location, expected_sha256, actual)
    return True


@dataclass(frozen=True)
class Fetch:
    """One file for ``fetch_all``: from ``location`` to ``dest``, pinned by ``sha256`` (None: any bytes)."""
    location: str
    dest: Path
    sha256: str | None
    label: str


def fetch_all(fetches: list[Fetch], policy: FetchPolicy, parallel: int,
              *, sleep: Callable[[float], None] = time.sleep) -> list[bool]:
    """``fetch_verified`` for each, ``parallel`` at a time in threads; what each returned, in order.

    The first failure (or Ctrl+C, SIGTERM) is raised at once: the fetches under way stop at their next read, those
    not started never start, and the temporary files of unfinished ones are removed. A thread still waiting on a
    silent server (up to ``timeout_s``) is a daemon, never waited for: it ends with the process, and can only
    rename a complete file into place.
    """
    stop, settled, lock = threading.Event(), threading.Event(), threading.Lock()
    queue = iter(range(len(fetches)))
    done: dict[int, bool] = {}
    failures: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            with lock:
                index = next(queue, None)
            if index is None:
                return
            fetch = fetches[index]
            try:
                fetched = fetch_verified(fetch.location, fetch.dest, fetch.sha256, policy, label=fetch.label,
                                         sleep=sleep, stop=stop)
            except Exception as exc:  # raised in the caller's thread
                with lock:
                    failures.append(exc)
                stop.set()
                settled.set()
                return
            with lock:
                done[index] = fetched
                if len(done) == len(fetches):
                    settled.set()

    if not fetches:
        return []
    threads = [threading.Thread(target=work, name=f"fetch-{i}", daemon=True)
               for i in range(min(parallel, len(fetches)))]
    for thread in threads:
        thread.start()
    try:
        settled.wait()
        if failures:
            raise failures[0]
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join(timeout=1.0)  # long enough for any thread that is reading to see stop
        for directory in {fetch.dest.parent for fetch in fetches}:
            remove_leftovers(directory)
        raise
    return [done[i] for i in range(len(fetches))]


def read_verified(path: Path, expected_sha256: str | None, label: str) -> tuple[bytes, str]:
    """A local book's bytes, read in place, and their sha256; ChecksumMismatch unless it is ``expected_sha256``
    (None: any bytes), DownloadError unless ``path`` is a regular file."""
    with open_regular_file(path, label) as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise _mismatch(label, str(path), expected_sha256, actual)
    return data, actual


def _copy(location: str, part: Path, policy: FetchPolicy, label: str, deadline: _Deadline) -> str:
    """One attempt: stream ``location`` into ``part``, returning the sha256 of what was written."""
    with part.open("wb") as out:
        if location.startswith(("http://", "https://")):
            digest = _copy_http(location, out, policy, label, deadline)
        else:
            digest = _copy_file(Path(location), out, policy, label, deadline)
    return digest


def _copy_file(path: Path, out: BinaryIO, policy: FetchPolicy, label: str, deadline: _Deadline) -> str:
    with open_regular_file(path, label) as src:
        size = os.fstat(src.fileno()).st_size
        if size > policy.max_bytes:
            raise DownloadError(f"{label}: {path} is {size} bytes, over the {policy.max_bytes}-byte cap")
        return _stream(src.read, out, size, policy, label, deadline)


def _copy_http(url: str, out: BinaryIO, policy: FetchPolicy, label: str, deadline: _Deadline) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with _OPENER.open(request, timeout=min(policy.timeout_s, max(deadline.left(), 0.001))) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if length is not None and length > policy.max_bytes:
                raise DownloadError(f"{label}: {url} announces {length} bytes, over the "
                                    f"{policy.max_bytes}-byte cap (corpus.max_download_mb)")
            # read1: whatever has arrived, so a trickling server cannot hold one read past the deadline.
            return _stream(response.read1, out, length, policy, label, deadline)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{label}: {url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot reach {url}: {exc.reason}") from None
    except (http.client.InvalidURL, ValueError, OverflowError) as exc:  # a host or port no request can reach
        raise DownloadError(f"{label}: {url} is not a valid URL ({exc})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc or 'timed out'}") from None


def _stream(read: Callable[[int], bytes], out: BinaryIO, length: int | None,
            policy: FetchPolicy, label: str, deadline: _Deadline) -> str:
    digest = hashlib.sha256()
    received = 0
    with tqdm(total=length, unit="B", unit_scale=True, desc=label, disable=None, leave=False) as bar:
        while True:
            deadline.check()
            chunk = read(_CHUNK)
            if not chunk:
                break
            received += len(chunk)
            if received > policy.max_bytes:
                raise DownloadError(f"{label}: more than {policy.max_bytes} bytes received, over the cap "
                                    f"(corpus.max_download_mb)")
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    if length is not None and received != length:
        raise _Transient(f"truncated body: {received} of {length} bytes")
    return digest.hexdigest()
