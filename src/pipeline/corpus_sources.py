"""Turn books named on the command line into pinned corpus.sources entries (exit 1 bad input, 2 corpus).

    python -m src.pipeline.corpus_sources --corpus-url URL_OR_PATH [--corpus-language CODE] ... [--from-dir DIR]

./scripts/train_pipeline.sh --corpus-url calls this: each book is fetched (into a temporary directory:
the download stage fetches it again, verified by the sha256 printed here), read, and described on stderr
(sha256, language, format). stdout is one `dvc exp run -S` value, ``corpus.sources=[...]``, in Hydra's
override syntax, which DVC parses. A local path is taken from ``--from-dir`` (the caller's working
directory) and recorded relative to the project root when it lies inside it.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from pathlib import Path

from src.config import ConfigError, CorpusConfig, check_field, check_url, load_config
from src.data.fetch import DownloadError, FetchPolicy, fetch_verified, sha256_of
from src.data.gutenberg import NotTextError, read_book
from src.data.languages import is_language_code, language_code
from src.lib.runtime.cli import ArgumentParser
from src.pipeline.stage import run_stage

log = logging.getLogger(__name__)

MAX_NAME = 64  # a source's name, made from its file's: it names a temporary file too


def source_location(given: str, from_dir: Path, root: Path) -> str:
    """An http(s) URL as given; a local path absolute, or relative to ``root`` when it lies inside it."""
    if given.startswith(("http://", "https://")):
        return given
    path = (from_dir / Path(given).expanduser()).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def describe(location: str, language: str | None, name: str, policy: FetchPolicy, workdir: Path) -> dict:
    """The pinned corpus.sources entry of one book: fetched, hashed, its format and language found."""
    raw_file = workdir / name
    fetch_verified(location, raw_file, None, policy, label="--corpus-url")
    raw = raw_file.read_bytes()
    try:
        book, text_format = read_book(raw, location), "gutenberg"
    except NotTextError:
        book, text_format = read_book(raw, location, "plain"), "plain"
    found = language_code(book.language) if book.language else None
    if language is None and found is None:
        said = f"names its language {book.language!r}" if book.language else "does not name its language"
        raise NotTextError(f"{location} {said}: give its ISO 639-1 code with --corpus-language after it")
    entry = {"name": name, "url": location, "language": language or found, "sha256": sha256_of(raw_file),
             "format": text_format}
    log.info("%s: sha256 %s, language %s (%s), %s text, %d characters", location, entry["sha256"], entry["language"],
             "given" if language else "from its Gutenberg header", text_format, len(book.text))
    return entry


def unique_name(location: str, taken: set[str]) -> str:
    """A source name from the file name: its stem, with characters other than [A-Za-z0-9_.-] made '_', at most
    MAX_NAME characters."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(location.rstrip("/")).stem)[:MAX_NAME] or "book"
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    taken.add(name)
    return name


def hydra_value(entries: list[dict]) -> str:
    """``entries`` as a Hydra override value (what `dvc exp run -S key=value` parses): every value quoted, None left out."""
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join("{" + ", ".join(f"{k}: {quoted(v)}" for k, v in e.items() if v is not None) + "}" for e in entries) + "]"


def corpus_sources(books: list[tuple[str, str | None]], cfg: CorpusConfig, from_dir: Path, root: Path) -> list[dict]:
    policy = FetchPolicy(cfg.timeout_s, cfg.retries, cfg.backoff_s, int(cfg.max_download_mb * 1e6), cfg.max_download_s)
    taken: set[str] = set()
    entries = []
    with tempfile.TemporaryDirectory(prefix="corpus_sources.") as workdir:
        for given, language in books:
            if language is not None and not is_language_code(language):
                raise ConfigError(f"--corpus-language {language!r} is not an ISO 639-1 code (en, fr, de, ...)")
            location = source_location(given, from_dir, root)
            check_url("--corpus-url", location)
            entries.append(describe(location, language, unique_name(location, taken), policy, Path(workdir)))
    check_field(CorpusConfig, "sources", entries)  # what params.yaml will hold passes its own check
    return entries


class _Language(argparse.Action):
    """--corpus-language sets the language of the --corpus-url just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        if not namespace.books or namespace.books[-1][1] is not None:
            parser.error("--corpus-language must follow the --corpus-url it gives the language of")
        namespace.books[-1] = (namespace.books[-1][0], value)


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-url", dest="books", action="append", required=True, metavar="URL_OR_PATH",
                        type=lambda value: (value, None))
    parser.add_argument("--corpus-language", action=_Language, metavar="CODE")
    parser.add_argument("--from-dir", type=Path, default=Path.cwd(), help="where relative paths start")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    def body() -> None:
        entries = corpus_sources(args.books, load_config(args.params).corpus, args.from_dir.resolve(), Path.cwd())
        print(f"corpus.sources={hydra_value(entries)}")

    run_stage("corpus", body, expected=(DownloadError, NotTextError))


if __name__ == "__main__":
    main()
