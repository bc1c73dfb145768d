"""Stage `download`: fetch the books and build the corpus, its index and its languages (exit code 2 on failure).

    python -m src.pipeline.download [--params params.yaml]

Each source is an http(s) URL (pinned by sha256) or a local file. Set TT_CORPUS_MIRROR to a directory or an
http(s) base URL to take the http(s) books from a mirror. data/raw/ persists across runs (dvc.yaml), so a
re-run fetches only the books that are not there yet with the pinned bytes.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from src import paths
from src.atomic import remove_leftovers, write_atomic, write_json
from src.config import BookSource, CorpusConfig, CorpusName, SplitConfig, load_config
from src.data.corpus import BookSpan, assemble, part_text, split_books, write_index
from src.data.fetch import MIRROR_ENV, DownloadError, FetchPolicy, fetch_verified, resolve_location, sha256_of
from src.data.gutenberg import Book, NotTextError, read_book
from src.data.language_profile import build_profile, opening_words
from src.data.languages import language_code
from src.pipeline.stage import StageError, require_free_disk, run_stage, stage_arguments

log = logging.getLogger(__name__)

# Fewer held-out characters than this in a language make too thin a profile for validate's language check,
# and too little text for a per-language loss that means anything.
MIN_HELD_OUT_CHARACTERS = 500


def download(cfg: CorpusConfig, split: SplitConfig, corpus_name: CorpusName, *, mirror: str | None,
             raw_dir: Path = paths.RAW_DIR, index_file: Path = paths.CORPUS_INDEX_FILE,
             sources_file: Path = paths.CORPUS_SOURCES, languages_file: Path = paths.LANGUAGES,
             metrics_file: Path = paths.CORPUS_METRICS) -> dict:
    require_free_disk(raw_dir, cfg.min_free_disk_gb)
    remove_leftovers(raw_dir)
    policy = FetchPolicy(cfg.timeout_s, cfg.retries, cfg.backoff_s, int(cfg.max_download_mb * 1e6),
                         cfg.max_download_s)
    books, cleaned, hashes = [], [], []
    for index, source in enumerate(cfg.sources):
        raw_file = raw_dir / source.file_name
        location = str(source.path) if source.is_local else resolve_location(source.url, source.file_name, mirror)
        fetched = fetch_verified(location, raw_file, source.sha256, policy, label=source.file_name)
        log.info("%s %s (%s)", "fetched" if fetched else "kept verified", raw_file, location if fetched else source.sha256[:12])
        book = read_book(raw_file.read_bytes(), source.file_name, source.format)
        books.append((source.name, book_language(source, book, f"corpus.sources[{index}]"), book.text))
        cleaned.append(book)
        hashes.append(source.sha256 or sha256_of(raw_file))
    for stale in set(os.listdir(raw_dir)) - {source.file_name for source in cfg.sources}:
        if (raw_dir / stale).is_file():
            (raw_dir / stale).unlink()  # a book no longer in corpus.sources (data/raw persists)

    corpus_name.check_languages([language for _, language, _ in books])  # the headers may have named some of them
    corpus, spans = assemble(books)
    languages = language_profiles(corpus, spans, split.holdout_fraction)
    write_atomic(corpus_name.file, corpus)
    write_index(index_file, spans)
    write_json(languages_file, languages)
    metrics = corpus_metrics(corpus, spans)
    write_json(sources_file, {"books": [
        {"name": source.name, "title": book.title, "author": book.author, "url": source.url, "sha256": sha256,
         "language": span.language, "share": metrics["books"][source.name]["share"], "licence": book.licence}
        for source, book, span, sha256 in zip(cfg.sources, cleaned, spans, hashes)]})
    write_json(metrics_file, {"corpus": metrics})  # one group per stage in `dvc exp show`: corpus.*
    log.info("corpus: %d bytes, %d characters, languages %s", metrics["bytes"], metrics["characters"],
             {lang: round(v["share"], 3) for lang, v in metrics["languages"].items()})
    return metrics


def book_language(source: BookSource, book: Book, key: str) -> str:
    """The source's language: as params set it, else as its Gutenberg header names it."""
    if source.language:
        return source.language
    code = language_code(book.language) if book.language else None
    if code is None:
        said = f"names its language {book.language!r}, which is not" if book.language else "names no language:"
        raise NotTextError(f"{source.file_name}: the text {said} an ISO 639-1 language; set {key}.language "
                           f"(e.g. `language: fr`) in params.yaml")
    return code


def language_profiles(corpus: bytes, spans: list[BookSpan], holdout_fraction: float) -> dict[str, dict]:
    """Per language: its held-out characters, the opening words and the n-gram profile of its held-out text."""
    try:
        splits = split_books(corpus, spans, holdout_fraction)
    except ValueError as exc:
        raise StageError(f"{exc}: add text to it or raise split.holdout_fraction") from None
    held_out: dict[str, str] = defaultdict(str)
    for book in splits:
        held_out[book.language] += part_text(corpus, book.validation)
    for language, text in held_out.items():
        if len(text) < MIN_HELD_OUT_CHARACTERS:
            books = ", ".join(book.name for book in splits if book.language == language)
            raise StageError(f"language '{language}' ({books}) has {len(text)} characters of held-out text "
                             f"(split.holdout_fraction = {holdout_fraction:g}); it needs {MIN_HELD_OUT_CHARACTERS}: "
                             f"add text in it or raise split.holdout_fraction")
    return {language: {"held_out_characters": len(text), "opening": opening_words(text),
                       "profile": build_profile(text)} for language, text in sorted(held_out.items())}


def corpus_metrics(corpus: bytes, spans: list[BookSpan]) -> dict:
    """Bytes, characters and each book's and language's share of the characters."""
    books = {}
    languages: dict[str, dict[str, float]] = defaultdict(lambda: {"bytes": 0, "characters": 0})
    for span in spans:
        size = span.end - span.start
        chars = len(corpus[span.start:span.end].decode("utf-8"))
        books[span.name] = {"bytes": size, "characters": chars}
        languages[span.language]["bytes"] += size
        languages[span.language]["characters"] += chars
    total_chars = sum(b["characters"] for b in books.values())
    for entry in (*books.values(), *languages.values()):
        entry["share"] = round(entry["characters"] / total_chars, 6)
    return {"bytes": len(corpus), "characters": len(corpus.decode("utf-8")),
            "books": books, "languages": dict(languages)}


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        download(cfg.corpus, cfg.split, cfg.corpus_name, mirror=os.environ.get(MIRROR_ENV))

    run_stage("download", body, expected=(DownloadError, NotTextError))


if __name__ == "__main__":
    main()
