"""Stage `download`: fetch the pinned books and build the bilingual corpus (exit code 2 on failure).

    python -m src.pipeline.download [--params params.yaml]

Set TT_CORPUS_MIRROR to a directory or an http(s) base URL to take the books from a mirror.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from src import paths
from src.atomic import remove_leftovers, write_atomic, write_json
from src.config import CorpusConfig, load_config
from src.data.corpus import BookSpan, assemble, write_index
from src.data.fetch import MIRROR_ENV, DownloadError, FetchPolicy, fetch_verified, resolve_location
from src.data.gutenberg import NotTextError, read_book
from src.pipeline.stage import ExitCode, require_free_disk, run_stage, stage_arguments

log = logging.getLogger(__name__)

def download(cfg: CorpusConfig, *, mirror: str | None, raw_dir: Path = paths.RAW_DIR,
             corpus_file: Path = paths.CORPUS_FILE, index_file: Path = paths.CORPUS_INDEX_FILE,
             sources_file: Path = paths.CORPUS_SOURCES, metrics_file: Path = paths.CORPUS_METRICS) -> dict:
    require_free_disk(raw_dir, cfg.min_free_disk_gb)
    remove_leftovers(raw_dir)
    policy = FetchPolicy(cfg.timeout_s, cfg.retries, cfg.backoff_s, int(cfg.max_download_mb * 1e6),
                         cfg.max_download_s)
    books, cleaned = [], []
    for source in cfg.sources:
        location = resolve_location(source.url, source.file_name, mirror)
        raw_file = raw_dir / source.file_name
        fetched = fetch_verified(location, raw_file, source.sha256, policy, label=source.file_name)
        log.info("%s %s (%s)", "fetched" if fetched else "kept verified", raw_file, location if fetched else source.sha256[:12])
        book = read_book(raw_file.read_bytes(), source.file_name, allow_unmarked=source.allow_unmarked)
        books.append((source.name, source.language, book.text))
        cleaned.append(book)

    corpus, spans = assemble(books)
    write_atomic(corpus_file, corpus)
    write_index(index_file, spans)
    metrics = corpus_metrics(corpus, spans)
    write_json(sources_file, {"books": [
        {"name": source.name, "title": book.title, "author": book.author, "url": source.url, "sha256": source.sha256,
         "language": source.language, "share": metrics["books"][source.name]["share"], "licence": book.licence}
        for source, book in zip(cfg.sources, cleaned)]})
    write_json(metrics_file, metrics)
    log.info("corpus: %d bytes, %d characters, languages %s", metrics["bytes"], metrics["characters"],
             {lang: round(v["share"], 3) for lang, v in metrics["languages"].items()})
    return metrics


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
    run_stage("download",
              lambda: download(load_config(args.params).corpus, mirror=os.environ.get(MIRROR_ENV)),
              ExitCode.CORPUS, expected=(DownloadError, NotTextError))


if __name__ == "__main__":
    main()
