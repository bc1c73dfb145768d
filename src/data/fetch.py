"""Fetch a pinned file over HTTP(S) or from a local mirror, verified by sha256 before it lands."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import quote

from tqdm import tqdm

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
    timeout_s: float
    retries: int
    backoff_s: float
    max_bytes: int


def resolve_location(url: str, file_name: str, mirror: str | None) -> str:
    """Where the bytes come from: the source URL, or ``<mirror>/<file_name>`` when a mirror is set.

    A mirror is an http(s) base URL or a local directory; any other scheme is refused.
    """
    if not mirror:
        return url
    if mirror.startswith(("http://", "https://")):
        return f"{mirror.rstrip('/')}/{quote(file_name)}"
    if _SCHEME.match(mirror):
        raise DownloadError(f"{MIRROR_ENV}={mirror!r}: only http://, https:// or a local directory are accepted")
    directory = Path(mirror).expanduser()
    if not directory.is_dir():
        raise DownloadError(f"{MIRROR_ENV}={mirror!r}: not a directory")
    return str(directory.resolve() / file_name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_verified(location: str, dest: Path, expected_sha256: str, policy: FetchPolicy,
                   *, label: str, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Make ``dest`` hold the bytes at ``location`` whose sha256 is ``expected_sha256``.

    Returns False when ``dest`` already held them (nothing fetched). The bytes go to a temporary
    file beside ``dest`` and replace it only once their hash matches, so a failed or wrong
    download never touches a file that was already there.
    """
    if dest.is_file() and sha256_of(dest) == expected_sha256:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        for attempt in range(policy.retries + 1):
            try:
                actual = _copy(location, part, policy, label)
                break
            except _Transient as exc:
                if attempt == policy.retries:
                    raise DownloadError(
                        f"{label}: giving up on {location} after {attempt + 1} attempt(s): {exc}") from None
                wait = policy.backoff_s * 2**attempt
                log.warning("%s: attempt %d failed (%s); retrying in %.1fs", label, attempt + 1, exc, wait)
                sleep(wait)
        if actual != expected_sha256:
            raise ChecksumMismatch(
                f"{label}: sha256 mismatch for {location}\n  expected {expected_sha256}\n  actual   {actual}\n"
                f"If upstream published a new version on purpose, check its text and set this book's "
                f"sha256 in params.yaml (corpus.sources) to {actual}.")
        os.replace(part, dest)
        return True
    finally:
        part.unlink(missing_ok=True)


def _copy(location: str, part: Path, policy: FetchPolicy, label: str) -> str:
    """One attempt: stream ``location`` into ``part``, returning the sha256 of what was written."""
    with part.open("wb") as out:
        if location.startswith(("http://", "https://")):
            digest = _copy_http(location, out, policy, label)
        else:
            digest = _copy_file(Path(location), out, policy, label)
        out.flush()
        os.fsync(out.fileno())
    return digest


def _copy_file(path: Path, out: BinaryIO, policy: FetchPolicy, label: str) -> str:
    try:
        size = path.stat().st_size
        if size > policy.max_bytes:
            raise DownloadError(f"{label}: {path} is {size} bytes, over the {policy.max_bytes}-byte cap")
        with path.open("rb") as src:
            return _stream(src.read, out, size, policy, label)
    except FileNotFoundError:
        raise DownloadError(f"{label}: {path} does not exist in the mirror") from None


def _copy_http(url: str, out: BinaryIO, policy: FetchPolicy, label: str) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=policy.timeout_s) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if length is not None and length > policy.max_bytes:
                raise DownloadError(f"{label}: {url} announces {length} bytes, over the "
                                    f"{policy.max_bytes}-byte cap (corpus.max_download_mb)")
            return _stream(response.read, out, length, policy, label)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{label}: {url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot reach {url}: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc or 'timed out'}") from None


def _stream(read: Callable[[int], bytes], out: BinaryIO, length: int | None,
            policy: FetchPolicy, label: str) -> str:
    digest = hashlib.sha256()
    received = 0
    with tqdm(total=length, unit="B", unit_scale=True, desc=label, disable=None, leave=False) as bar:
        while chunk := read(_CHUNK):
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
