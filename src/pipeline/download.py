"""Stage `download`: fetch the books and build the corpus, its index and its languages (exit code 2 on failure).

    python -m src.pipeline.download [--params params.yaml]

Each source is an http(s) URL (pinned by sha256), a local file, or a directory in books/ whose .txt files are
each a book. Set TT_CORPUS_MIRROR to a directory or an http(s) base URL to take the http(s) books from a mirror.
The http(s) books are fetched into data/raw/, corpus.parallel_downloads at a time; data/raw/ persists across runs
(dvc.yaml), so a re-run fetches only the books that are not there yet with the pinned bytes. Local books are read
where they are, never copied.

The corpus is built a book at a time: each is read, cleaned, split and indexed (which lines of its file hold its
training and its held-out text: src/data/corpus.py), counted (its figures, its held-out text's words), and
appended to the corpus text file while it holds at most corpus.text_file_mb MB, then dropped, so
memory follows the largest book, not the corpus. On disk, the text is the books' own files: the index points
into them, and a large corpus is not copied.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from src import paths
from src.atomic import remove_leftovers, replacing, write_json
from src.config import BookSource, CorpusConfig, CorpusName, SplitConfig, load_config
from src.data.corpus import BOOK_SEPARATOR, BookFile, CorpusWriter, LineMap, split_book, write_index
from src.data.fetch import (MIRROR_ENV, DownloadError, Fetch, FetchPolicy, fetch_all, read_verified,
                            resolve_location)
from src.data.gutenberg import Book, NotTextError, read_book
from src.data.language_profile import ngrams_of_words, opening_words, profile_of, word_counts
from src.data.languages import language_code
from src.pipeline.stage import StageError, require_free_disk, run_stage, stage_arguments

log = logging.getLogger(__name__)

# Fewer held-out characters than this in a language make too thin a profile for validate's language check,
# and too little text for a per-language loss that means anything.
MIN_HELD_OUT_CHARACTERS = 500
# The opening words of a language's held-out text (validate's prompt where params give none) are read from its
# first this many characters: a paragraph break and six words after it come long before.
OPENING_CHARACTERS = 1_000_000
BOOK_SUFFIX = ".txt"  # the files of a directory source that are books


@dataclass
class LanguageText:
    """What the download stage keeps of a language's held-out text: its length, its opening and its words' counts."""
    books: list[str] = field(default_factory=list)
    characters: int = 0
    opening: str = ""
    words: Counter = field(default_factory=Counter)

    def add(self, book: str, held_out: str) -> None:
        self.books.append(book)
        self.characters += len(held_out)
        if len(self.opening) < OPENING_CHARACTERS:
            self.opening += held_out[:OPENING_CHARACTERS - len(self.opening)]
        self.words.update(word_counts(held_out))


@dataclass
class Tally:
    """The books, bytes and characters of a language (or of one book)."""
    bytes: int = 0
    characters: int = 0
    books: int = 0

    def add(self, size: int, characters: int) -> None:
        self.bytes += size
        self.characters += characters
        self.books += 1


def download(cfg: CorpusConfig, split: SplitConfig, corpus_name: CorpusName, *, mirror: str | None,
             raw_dir: Path = paths.RAW_DIR, index_file: Path = paths.CORPUS_INDEX_FILE,
             sources_file: Path = paths.CORPUS_SOURCES, languages_file: Path = paths.LANGUAGES,
             metrics_file: Path = paths.CORPUS_METRICS) -> dict:
    require_free_disk(raw_dir, cfg.min_free_disk_gb)
    remove_leftovers(raw_dir)
    books = [book for index, source in enumerate(cfg.books) for book in each_book(source, source_key(cfg, index))]
    fetch_remote([source for source, _ in books if not source.is_local], cfg, mirror, raw_dir)

    described, held_out, languages, splits, files = [], {}, {}, [], {}
    with replacing(corpus_name.file) as part, part.open("wb") as out:
        # The corpus text file is for people to read, written while the corpus is small: the later stages read
        # the books in place, through the index (src/data/corpus.py).
        writer = CorpusWriter(out, cfg.text_file_mb * 1e6)
        for source, key in books:
            path, raw, sha256 = read_source(source, raw_dir)
            book = read_book(raw, source.url if source.is_local else source.file_name, source.format)
            language = book_language(source, book, key)
            text = book.text.encode("utf-8")
            writer.add(text)
            try:
                book_split = split_book(source.name, language, LineMap(path.as_posix(), raw, book), book, text,
                                        split.holdout_fraction)
            except ValueError as exc:
                raise StageError(f"{exc}: add text to it or raise split.holdout_fraction") from None
            splits.append(book_split)
            files[path] = BookFile(path.as_posix(), len(raw), sha256)
            held_out.setdefault(language, LanguageText()).add(source.name,
                                                               text[book_split.train_bytes:].decode("utf-8"))
            characters = book.span[1] - book.span[0]
            languages.setdefault(language, Tally()).add(len(text), characters)
            described.append({"name": source.name, "title": book.title, "author": book.author, "url": source.url,
                              "sha256": sha256, "language": language, "bytes": len(text),
                              "characters": characters, "licence": book.licence})
        writer.finish()
        if not writer.written:
            out.write(text_file_note(writer.size, writer.books, cfg.text_file_mb).encode("utf-8"))
        corpus_name.check_languages(list(languages))  # the headers may have named some of them
        profiles = language_profiles(held_out, split.holdout_fraction)
    write_index(index_file, list(files.values()), splits)
    write_json(languages_file, profiles)
    metrics = corpus_metrics(writer.size, languages)
    book_characters = sum(tally.characters for tally in languages.values())
    write_json(sources_file, {"books": [with_share(entry, book_characters) for entry in described]})
    write_json(metrics_file, {"corpus": metrics})  # one group per stage in `dvc exp show`: corpus.*
    log.info("corpus: %d books, %d bytes, %d characters, languages %s", metrics["books"], metrics["bytes"],
             metrics["characters"], {lang: round(v["share"], 3) for lang, v in metrics["languages"].items()})
    return metrics


def with_share(entry: dict, book_characters: int) -> dict:
    """A book's entry in data/corpus_sources.json: its share of the books' characters added before its licence."""
    *figures, (_, licence) = entry.items()
    return {**dict(figures), "share": round(entry["characters"] / book_characters, 6), "licence": licence}


def source_key(cfg: CorpusConfig, index: int) -> str:
    """Where the ``index``-th of ``cfg.books`` is listed, as messages name it: params.yaml's key, or the sources
    file's row."""
    if index < len(cfg.sources):
        return f"corpus.sources[{index}]"
    return f"{cfg.sources_file} row {index - len(cfg.sources) + 1}"


def each_book(source: BookSource, key: str) -> list[tuple[BookSource, str]]:
    """The books of a source, each with the params key that names it: the source itself, or for a directory each
    .txt file under it, in path order, named <source name>/<path in the directory>."""
    if not source.is_directory:
        return [(source, key)]
    if not source.path.is_dir():
        raise DownloadError(f"{key}: {source.url} is not a directory")
    files = sorted(path for path in source.path.rglob(f"*{BOOK_SUFFIX}") if path.is_file())
    if not files:
        raise DownloadError(f"{key}: {source.url} holds no {BOOK_SUFFIX} file")
    return [(BookSource(f"{source.name}/{path.relative_to(source.path).as_posix()}", str(path), source.language,
                        None, source.format), key) for path in files]


def fetch_remote(sources: list[BookSource], cfg: CorpusConfig, mirror: str | None, raw_dir: Path) -> None:
    """The http(s) books into ``raw_dir``, ``cfg.parallel_downloads`` at a time; any other file there is removed
    (a book no longer listed: data/raw persists)."""
    policy = FetchPolicy(cfg.timeout_s, cfg.retries, cfg.backoff_s, int(cfg.max_download_mb * 1e6),
                         cfg.max_download_s)
    fetches = [Fetch(resolve_location(source.url, source.file_name, mirror), raw_dir / source.file_name,
                     source.sha256, source.file_name) for source in sources]
    raw_dir.mkdir(parents=True, exist_ok=True)  # an output of the stage, if empty
    for fetch, fetched in zip(fetches, fetch_all(fetches, policy, cfg.parallel_downloads)):
        log.info("%s %s (%s)", "fetched" if fetched else "kept verified", fetch.dest,
                 fetch.location if fetched else fetch.sha256[:12])
    for stale in set(os.listdir(raw_dir)) - {source.file_name for source in sources}:
        if (raw_dir / stale).is_file():
            (raw_dir / stale).unlink()


def read_source(source: BookSource, raw_dir: Path) -> tuple[Path, bytes, str]:
    """A book's file, its bytes and their sha256: a local one read where it is, held to its pin; an http(s) one
    from ``raw_dir``, where ``fetch_remote`` verified it."""
    if source.is_local:
        return source.path, *read_verified(source.path, source.sha256, source.url)
    path = raw_dir / source.file_name
    return path, path.read_bytes(), source.sha256


def text_file_note(size: int, books: int, text_file_mb: float) -> str:
    """What the corpus text file says when the corpus is too large for it to hold a copy of the text."""
    return (f"This corpus holds {size:,} bytes of text in {books:,} books, more than corpus.text_file_mb = "
            f"{text_file_mb:g} MB, so it is not copied here: the pipeline reads each book in place, as "
            f"data/corpus_index.json says. Raise corpus.text_file_mb to have it written here as one file.\n")


def book_language(source: BookSource, book: Book, key: str) -> str:
    """The source's language: as params set it, else as its Gutenberg header names it."""
    if source.language:
        return source.language
    code = language_code(book.language) if book.language else None
    if code is None:
        said = f"names its language {book.language!r}, which is not" if book.language else "names no language:"
        label = source.url if source.is_local else source.file_name
        where = f"{key}.language (e.g. `language: fr`) in params.yaml" if key.startswith("corpus.sources[") else \
            f"the language of {key} (e.g. fr)"
        raise NotTextError(f"{label}: the text {said} an ISO 639-1 language; set {where}")
    return code


def language_profiles(held_out: dict[str, LanguageText], holdout_fraction: float) -> dict[str, dict]:
    """Per language: its held-out characters, the opening words and the n-gram profile of its held-out text."""
    for language, text in held_out.items():
        if text.characters < MIN_HELD_OUT_CHARACTERS:
            raise StageError(f"language '{language}' ({', '.join(text.books)}) has {text.characters} characters of "
                             f"held-out text (split.holdout_fraction = {holdout_fraction:g}); it needs "
                             f"{MIN_HELD_OUT_CHARACTERS}: add text in it or raise split.holdout_fraction")
    return {language: {"held_out_characters": text.characters, "opening": opening_words(text.opening),
                       "profile": profile_of(ngrams_of_words(text.words))}
            for language, text in sorted(held_out.items())}


def corpus_metrics(size: int, languages: dict[str, Tally]) -> dict:
    """The corpus's bytes and characters, its number of books and each language's share of the books' characters.
    Each book's figures are in data/corpus_sources.json: `dvc exp show` keeps as many columns for any shelf."""
    book_characters = sum(tally.characters for tally in languages.values())
    books = sum(tally.books for tally in languages.values())
    separators = len(BOOK_SEPARATOR) * (books - 1) + 1  # between the books, and the final newline
    return {"bytes": size, "characters": book_characters + separators, "books": books,
            "languages": {language: {"bytes": tally.bytes, "characters": tally.characters,
                                     "share": round(tally.characters / book_characters, 6)}
                          for language, tally in languages.items()}}


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        download(cfg.corpus, cfg.split, cfg.corpus_name, mirror=os.environ.get(MIRROR_ENV))

    run_stage("download", body, expected=(DownloadError, NotTextError))


if __name__ == "__main__":
    main()
