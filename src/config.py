"""The one typed configuration of the pipeline, loaded from ``params.yaml`` and validated once.

Every stage receives the section objects it needs, never the raw dict. Each field declares, once, the
``params.yaml`` key it comes from and the rule its value must follow (type, range, choices); sections
are built from those declarations, so ``dvc.yaml`` can list exactly the keys a stage reads
(``params_keys``, held to the code by a test) and any other reader of such values (a checkpoint's
recorded shape) applies the same rules (``check_field``).

params.yaml is read as DVC reads and writes it: YAML 1.2 (``dvc exp run -S learning_rate=5e-5`` writes
``5e-05``, a float in YAML 1.2 and a string in YAML 1.1). Anchors and aliases are refused: params need
none, and nested aliases can expand a few lines into billions of values.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import math
import re
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from src import paths
from src.data.languages import is_language_code
from src.lib.runtime.sampling_bounds import SAMPLING_BOUNDS, out_of_bounds

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A params value is missing, of the wrong type, or out of its allowed range."""


# --- rules: how one raw value becomes a field's value ------------------------------------------

Rule = Callable[[str, Any], Any]  # (dotted key, raw value) -> value; raises ConfigError naming the key


def _number_rule(kind: type, lo: float, hi: float, lo_open: bool) -> Rule:
    allowed = f"{'an integer' if kind is int else 'a number'} in {'(' if lo_open else '['}{lo}, {hi}]"

    def rule(key: str, value: Any) -> Any:
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or (kind is float and not math.isfinite(value)):
            raise ConfigError(f"'{key}' = {value!r} is not valid: must be {allowed}")
        if value < lo or value > hi or (lo_open and value == lo):
            raise ConfigError(f"'{key}' = {value!r} is out of range: must be {allowed}")
        return kind(value)
    return rule


def _choice_rule(choices: tuple[str, ...]) -> Rule:
    def rule(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"'{key}' = {value!r} is not allowed: must be one of {', '.join(choices)}")
        return value
    return rule


def _flag_rule(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"'{key}' = {value!r} is not valid: must be true or false")
    return value


def _flag_or_auto_rule(key: str, value: Any) -> bool | str:
    if value != "auto" and not isinstance(value, bool):
        raise ConfigError(f"'{key}' = {value!r} is not valid: must be auto, true or false")
    return value


def _sampling_rule(name: str) -> Rule:
    """The sampling value ``name`` by the rule every source of one follows (src/lib/runtime/sampling.py)."""
    kind = int if SAMPLING_BOUNDS[name].integer else float

    def rule(key: str, value: Any) -> Any:
        bounds = out_of_bounds(name, value)
        if bounds:
            raise ConfigError(f"'{key}' = {value!r} is not valid: must be {bounds}")
        return kind(value)
    return rule


def _text_rule(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{key}' = {value!r} is not valid: must be a non-empty string")
    return value


def param(key: str, rule: Rule) -> Any:
    """A dataclass field read from the params.yaml key ``key`` (dotted for sections) through ``rule``."""
    return field(metadata={"key": key, "rule": rule})


def number(key: str, kind: type, lo: float, hi: float, *, lo_open: bool = False) -> Any:
    """An int or float field within [lo, hi] (or (lo, hi] with ``lo_open``)."""
    return param(key, _number_rule(kind, lo, hi, lo_open))


def choice(key: str, *choices: str) -> Any:
    return param(key, _choice_rule(choices))


def flag(key: str) -> Any:
    return param(key, _flag_rule)


def flag_or_auto(key: str) -> Any:
    return param(key, _flag_or_auto_rule)


def sampling(key: str, name: str) -> Any:
    """A sampling value (``name``: temperature, top_k, ...) read from ``key``."""
    return param(key, _sampling_rule(name))


def nonempty_text(key: str) -> Any:
    return param(key, _text_rule)


def subsection(key: str, section: type) -> Any:
    """A field holding a nested section whose own fields name their keys."""
    return field(metadata={"key": key, "section": section})


# Keys that several sections read: declared once here.
def seed_field() -> Any:
    return number("seed", int, 0, 2**31 - 1)


def context_length_field() -> Any:
    return number("max_seq_length", int, 8, 8192)


def vocab_size_field() -> Any:
    # The token dataset is stored as uint16, so ids must stay below 65536.
    return number("vocab_size", int, 64, 65536)


# --- the book sources ----------------------------------------------------------------------------

HTTP_SCHEMES = ("http://", "https://")
TEXT_FORMATS = ("gutenberg", "plain")
SOURCES_FILE_FORMATS = (".csv", ".jsonl")  # a sources file's suffix says how it is written
_SOURCE_KEYS = ("name", "url", "language", "sha256", "format")


@dataclass(frozen=True)
class BookSource:
    name: str
    # An http(s) URL, or a local path (relative to the project root, or absolute): a file, or a directory in books/
    # whose .txt files are each a book.
    url: str
    language: str | None = None  # ISO 639-1; None: the Gutenberg header's Language line says
    sha256: str | None = None  # required but in books/, which DVC hashes (the download stage's dependency)
    format: str = "gutenberg"  # gutenberg: strip Project Gutenberg's header, footer and licence | plain: keep all

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(HTTP_SCHEMES)

    @property
    def path(self) -> Path:
        """A local source's file or directory (a relative path is from the project root, where stages run)."""
        return Path(self.url).expanduser()

    @property
    def is_directory(self) -> bool:
        """A local directory (spelled with a final '/', or found to be one): each .txt file under it is a book."""
        return self.is_local and (self.url.endswith("/") or self.path.is_dir())

    @property
    def in_books(self) -> bool:
        """Inside the project's books/ folder, which DVC hashes as the download stage's dependency (books/ itself
        for a directory)."""
        parts = PurePosixPath(self.url).parts
        inside = len(parts) > 1 or (self.url.endswith("/") and len(parts) == 1)
        return self.is_local and inside and parts[0] == paths.BOOKS_DIR.name and ".." not in parts

    @property
    def file_name(self) -> str:
        """The book's file name: on Gutenberg, in a mirror and in data/raw/."""
        return PurePosixPath(self.url if self.is_local else urlparse(self.url).path).name


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_NAME = 200  # a file system's limit is 255 bytes; an interrupted write's ".<name>.<pid>.part" needs the rest
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class _Where:
    """Where a source is written, as messages name it and its fields: params.yaml's 'corpus.sources[2].url', or a
    sources file's "books/shelf.csv line 3: 'url'"."""
    place: str
    in_file: bool = False

    def key(self, field_name: str | None = None) -> str:
        if self.in_file:
            return f"{self.place}: '{field_name}'" if field_name else self.place
        return f"'{self.place}.{field_name}'" if field_name else f"'{self.place}'"


def check_url(label: str, url: str) -> None:
    """An http(s) URL whose path ends in a file name, or a local path naming a file or a directory (not '/', '.' or
    '..'); the name at most MAX_FILE_NAME characters, so that data/raw/ can hold it and its temporary file.
    ``label`` is how messages name the value ("'corpus.sources[0].url'", "books/x.csv row 2: 'url'", "--corpus-url")."""
    if url.startswith(HTTP_SCHEMES):
        try:
            parsed = urlparse(url)
        except ValueError as exc:  # a bracketed host that is not one: "Invalid IPv6 URL"
            raise ConfigError(f"{label} = {url!r} is not a valid URL ({exc})") from None
        name = parsed.path.rsplit("/", 1)[-1]
        ok = bool(parsed.netloc) and name not in ("", ".", "..")
    else:
        name = PurePosixPath(url).name
        ok = not _SCHEME.match(url) and name not in ("", ".", "..")
    if not ok:
        raise ConfigError(f"{label} = {url!r} must be an http(s) URL of a file or a local file's or directory's path")
    if len(name) > MAX_FILE_NAME:
        raise ConfigError(f"{label}: its file name is {len(name)} characters long, more than the {MAX_FILE_NAME} "
                          f"a book's may have")


def _source_rule(where: _Where, item: Any) -> BookSource:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where.key()} must be a mapping with name, url and (for http) sha256")
    item = dict(item)
    if "path" in item:  # a local source's other name for url
        if "url" in item:
            raise ConfigError(f"{where.key()} has both url and path: give one")
        item["url"] = item.pop("path")
    unknown = set(map(str, item)) - set(_SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where.key()} has unknown keys: {', '.join(sorted(unknown))} (allowed: name, url or "
                          f"path, language, sha256, format)")
    for required in ("name", "url"):
        if not isinstance(item.get(required), str) or not item[required]:
            raise ConfigError(f"{where.key(required)} must be a non-empty string")
    if not _NAME.match(item["name"]):
        raise ConfigError(f"{where.key('name')} = {item['name']!r} may only use letters, digits, '_', '.', '-'")
    check_url(where.key("url"), item["url"])
    if item.get("language") is not None and not is_language_code(item["language"]):
        raise ConfigError(f"{where.key('language')} = {item['language']!r} is not an ISO 639-1 code (two letters: "
                          f"en, fr, de, zh, ...)")
    sha256 = item.get("sha256")
    located = BookSource(item["name"], item["url"])
    if located.is_directory:
        if not located.in_books:
            raise ConfigError(f"{where.key('url')} = {item['url']!r} is a directory outside {paths.BOOKS_DIR}/: one "
                              f"sha256 cannot pin a directory, DVC hashes {paths.BOOKS_DIR}/: move it there")
        if sha256 is not None:
            raise ConfigError(f"{where.key('sha256')} pins a file, and {item['url']!r} is a directory (DVC hashes "
                              f"{paths.BOOKS_DIR}/): leave sha256 out")
    if sha256 is None and item["url"].startswith(HTTP_SCHEMES):
        raise ConfigError(f"{where.key('sha256')} is required for an http(s) source: the corpus never changes "
                          f"silently (./scripts/train_pipeline.sh --corpus-url prints it)")
    if sha256 is None and not located.in_books:
        raise ConfigError(f"{where.key('sha256')} is required for a local file outside {paths.BOOKS_DIR}/ (DVC hashes "
                          f"the books there): move it there, or pin it (`sha256sum FILE` prints it; "
                          f"./scripts/train_pipeline.sh --corpus-url pins it)")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise ConfigError(f"{where.key('sha256')} = {sha256!r} must be 64 lowercase hex digits")
    text_format = item.get("format", "gutenberg")
    if text_format not in TEXT_FORMATS:
        raise ConfigError(f"{where.key('format')} = {text_format!r} is not allowed: must be one of "
                          f"{', '.join(TEXT_FORMATS)}")
    return BookSource(**item)


def _sources_rule(key: str, items: Any) -> tuple[BookSource, ...]:
    """The books listed in params.yaml: none when a sources file lists them all."""
    if not isinstance(items, list):
        raise ConfigError(f"'{key}' must be a list of books (empty when 'corpus.sources_file' lists them)")
    return tuple(_source_rule(_Where(f"{key}[{i}]"), item) for i, item in enumerate(items))


def _sources_file_rule(key: str, value: Any) -> str | None:
    """A CSV or JSON-lines file in books/ (DVC hashes the folder, so editing it re-runs the pipeline), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or PurePosixPath(value).suffix not in SOURCES_FILE_FORMATS:
        raise ConfigError(f"'{key}' = {value!r} is not valid: must be a .csv or .jsonl file in {paths.BOOKS_DIR}/, "
                          f"or null")
    if not BookSource("sources", value).in_books:
        raise ConfigError(f"'{key}' = {value!r} must be in {paths.BOOKS_DIR}/, which DVC hashes, so that editing it "
                          f"re-runs the pipeline: move it there")
    return value


def _file_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of each book a sources file lists: a CSV with a header row, or a JSON object a line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as exc:  # from the line after the last row read
                raise ConfigError(f"{path} line {reader.line_num + 1}: not valid CSV ({exc})") from None
            if None in row or None in row.values():
                raise ConfigError(f"{path} line {reader.line_num}: not one value for each column of the header "
                                  f"({', '.join(reader.fieldnames or ())})")
            rows.append((reader.line_num, {k.strip(): v.strip() for k, v in row.items() if v.strip()}))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except ValueError as exc:
                raise ConfigError(f"{path} line {number}: not a JSON object ({exc})") from None
    return rows


def read_sources_file(name: str) -> tuple[BookSource, ...]:
    """The books a sources file lists (relative to the project root, where stages run), each checked as a
    params.yaml source is; ConfigError naming the file and the line."""
    path = Path(name)
    try:
        rows = _file_rows(path)
    except FileNotFoundError:
        raise ConfigError(f"'corpus.sources_file' = {name!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"'corpus.sources_file' = {name!r} cannot be read ({exc})") from None
    return tuple(_source_rule(_Where(f"{name} line {number}", in_file=True), row) for number, row in rows)


def _check_unique(books: tuple[BookSource, ...], where: str) -> None:
    """Names are unique, and so are the file names of the books downloaded into data/raw/."""
    for attr, among in (("name", books), ("file_name", [b for b in books if not b.is_local])):
        dupes = sorted(v for v, n in Counter(getattr(b, attr) for b in among).items() if n > 1)
        if dupes:
            raise ConfigError(f"{where} has duplicate book {attr}s: {', '.join(dupes)}")


def _file_name_rule(key: str, value: Any) -> str:
    """A name that makes a file name (data/corpus_<name>.txt): letters, digits, '_', '.', '-'."""
    if not isinstance(value, str) or not _NAME.match(value) or value.startswith("."):
        raise ConfigError(f"'{key}' = {value!r} is not valid: must be a file name of letters, digits, '_', '.' "
                          f"and '-' (e.g. bilingual)")
    return value


def _prompts_rule(key: str, prompts: Any) -> dict[str, str]:
    """Language code -> prompt; languages of the corpus without one are prompted with their held-out text."""
    if not isinstance(prompts, Mapping):
        raise ConfigError(f"'{key}' must map language codes to prompts, e.g. {{en: 'It was', fr: 'Il était'}}")
    for code, prompt in prompts.items():
        if not is_language_code(code):
            raise ConfigError(f"'{key}.{code}': {code!r} is not an ISO 639-1 language code (en, fr, de, ...)")
        _text_rule(f"{key}.{code}", prompt)
    return dict(prompts)


# --- the sections --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusConfig:
    sources: tuple[BookSource, ...] = param("corpus.sources", _sources_rule)
    # A CSV or JSON-lines file in books/ listing more books, one a row, with the same keys (None: no file).
    sources_file: str | None = param("corpus.sources_file", _sources_file_rule)
    parallel_downloads: int = number("corpus.parallel_downloads", int, 1, 64)  # http(s) books fetched at once
    timeout_s: float = number("corpus.timeout_s", float, 0.1, 3600)  # the longest wait for any one read
    # The longest one book's download may take, every attempt and backoff included.
    max_download_s: float = number("corpus.max_download_s", float, 1, 86_400)
    retries: int = number("corpus.retries", int, 0, 20)
    backoff_s: float = number("corpus.backoff_s", float, 0, 600)
    max_download_mb: float = number("corpus.max_download_mb", float, 0, 10_000, lo_open=True)
    min_free_disk_gb: float = number("corpus.min_free_disk_gb", float, 0, 1_000_000)
    # The corpus text file (data/corpus_<name>.txt) holds the corpus's text while it is at most this many MB;
    # beyond, it says where the text is (the later stages read the books in place, whatever its size).
    text_file_mb: float = number("corpus.text_file_mb", float, 0, 1_000_000)
    # Every source: params.yaml's, then the sources file's (read and checked here, once).
    books: tuple[BookSource, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        books = self.sources + (read_sources_file(self.sources_file) if self.sources_file else ())
        if not books:
            raise ConfigError("'corpus.sources' is empty and 'corpus.sources_file' is null: list the books in one "
                              "of them")
        _check_unique(books, "'corpus.sources'" + (f" with {self.sources_file}" if self.sources_file else ""))
        object.__setattr__(self, "books", books)


@dataclass(frozen=True)
class CorpusName:
    """What the corpus file is called: data/corpus_<name>.txt, the name saying the corpus's languages."""
    name: str = param("names.corpus", _file_name_rule)

    @property
    def file(self) -> Path:
        return paths.corpus_file(self.name)

    def check_languages(self, languages: list[str]) -> None:
        """ConfigError unless the name says a corpus in ``languages`` is what the file holds."""
        expected = paths.corpus_name(languages)
        if self.name != expected:
            raise ConfigError(f"'names.corpus' = {self.name!r} does not say what the corpus holds "
                              f"({', '.join(sorted(set(languages)))}): set it to {expected!r}, and 'names.tokenizer' "
                              f"to match (./scripts/train_pipeline.sh sets both)")


@dataclass(frozen=True)
class TokenizerName:
    """What the tokenizer files are called: data/<name>.model and .vocab, the name saying the corpus and the
    vocabulary size."""
    name: str = param("names.tokenizer", _file_name_rule)

    @property
    def model(self) -> Path:
        return paths.tokenizer_model(self.name)

    @property
    def vocab(self) -> Path:
        return paths.tokenizer_vocab(self.name)


@dataclass(frozen=True)
class SplitConfig:
    # The last ``holdout_fraction`` of each book is validation text; the rest trains.
    holdout_fraction: float = number("split.holdout_fraction", float, 0.01, 0.5)


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = vocab_size_field()
    model_type: str = choice("tokenizer.model_type", "unigram", "bpe")
    character_coverage: float = number("tokenizer.character_coverage", float, 0.9, 1.0)
    # sentencepiece's training threads. The tokenizer it learns depends on their number, so it is a param,
    # not the machine's core count: every machine learns the same tokenizer from the same corpus.
    threads: int = number("tokenizer.threads", int, 1, 256)
    # The training text sentencepiece learns from, at most (MB of UTF-8): the whole when there is no more, else a
    # random sample of its lines drawn with ``seed``. Its memory grows with the sample, never with the corpus.
    sample_mb: float = number("tokenizer.sample_mb", float, 0, 100_000, lo_open=True)
    seed: int = seed_field()


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = number("model.n_layers", int, 1, 64)
    n_heads: int = number("model.n_heads", int, 1, 64)
    d_model: int = number("model.d_model", int, 8, 4096)
    d_ff: int = number("model.d_ff", int, 8, 16384)
    dropout: float = number("model.dropout", float, 0, 0.9)
    context_length: int = context_length_field()

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"'model.d_model' = {self.d_model} must split into 'model.n_heads' = {self.n_heads} "
                              f"heads of an even width (rotary positions rotate pairs)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = number("epochs", int, 1, 10_000)
    batch_size: int = number("batch_size", int, 1, 4096)
    learning_rate: float = number("learning_rate", float, 0, 1, lo_open=True)
    max_seq_length: int = context_length_field()
    seed: int = seed_field()
    weight_decay: float = number("train.weight_decay", float, 0, 1)
    # adamw: AdamW for every weight | muon: torch.optim.Muon for the hidden weight matrices, AdamW for the
    # embedding (tied to the head), norm gains and biases.
    optimizer: str = choice("train.optimizer", "adamw", "muon")
    # Linear warmup, then cosine: decay from the peak to learning_rate * min_lr_ratio over the rest of the run;
    # wsd (warmup-stable-decay): hold the peak, then decay linearly over the last decay_fraction of the steps.
    schedule: str = choice("train.schedule", "cosine", "wsd")
    warmup_steps: int = number("train.warmup_steps", int, 0, 1_000_000)
    min_lr_ratio: float = number("train.min_lr_ratio", float, 0, 1)
    decay_fraction: float = number("train.decay_fraction", float, 0, 1, lo_open=True)
    grad_clip: float = number("train.grad_clip", float, 0, 1000, lo_open=True)
    # The budget: 0, `epochs` passes over the training text; N > 0, N optimizer steps (the schedule spans them,
    # and the run may end within an epoch).
    max_steps: int = number("train.max_steps", int, 0, 1_000_000_000)
    eval_batch_size: int = number("train.eval_batch_size", int, 1, 4096)
    # Evaluate every this many optimizer steps, at each epoch's end and at the run's end (0: at epoch ends).
    eval_every_steps: int = number("train.eval_every_steps", int, 0, 1_000_000)
    # What an evaluation scores: a fixed sample of this many tokens of the validation split, the same windows for
    # every run (so its cost does not grow with the corpus and its loss stays comparable); 0, or more tokens than
    # the split holds: all of it.
    eval_tokens: int = number("train.eval_tokens", int, 0, 1_000_000_000)
    # A training-loss row (metrics/train_history.json, the plots) every this many steps: it costs nothing.
    log_every_steps: int = number("train.log_every_steps", int, 1, 1_000_000)
    checkpoint_every: int = number("train.checkpoint_every", int, 1, 10_000)  # epochs between periodic checkpoints
    # The resume point (data/checkpoints/last.pt) is written at each epoch's end, and also every this many steps
    # and every this many minutes of training (0: not), within an epoch too.
    checkpoint_every_steps: int = number("train.checkpoint_every_steps", int, 0, 1_000_000_000)
    checkpoint_minutes: float = number("train.checkpoint_minutes", float, 0, 10_000)
    # bf16 autocast runs the matrix products in bfloat16 (weights and optimizer stay fp32); auto: the faster of
    # the two on this machine, measured once and cached (src/training/speed_choices.py).
    precision: str = choice("train.precision", "auto", "bf16", "fp32")
    # The training step's attention kernel: SDPA's math (plain products) or fused flash kernel; auto: the faster
    # of the two on this machine in the precision chosen, measured once and cached (PyTorch's choice on CUDA).
    attention: str = choice("train.attention", "auto", "math", "flash")
    # torch.compile the training step's forward and loss: slower to start, faster per step. auto: compile when
    # the run's steps repay the compilation on this machine, measured once and cached (speed_choices.py).
    compile: bool | str = flag_or_auto("train.compile")
    # Where training runs ("auto": CUDA when PyTorch sees it, else the CPU) and in how many processes
    # (more than 1: the stage launches itself through torchrun, DDP over gloo on CPU, nccl on CUDA).
    device: str = choice("train.device", "auto", "cpu", "cuda")
    nproc: int = number("train.nproc", int, 1, 256)
    # Machines the run spans (torchrun's static rendezvous): each runs train.nproc workers; on every machine
    # TT_MASTER=host:port names machine 0's, and TT_NODE_RANK=0, 1, ... each one (docs/WORKFLOWS.md).
    nnodes: int = number("train.nnodes", int, 1, 1024)
    # Threads of a single-process CPU training; 0: the cores shared by the trainings running at once
    # (src/training/threads.py), so that `dvc queue start -j N` does not oversubscribe the cores.
    threads: int = number("train.threads", int, 0, 1024)
    # An epoch-2+ validation loss above this means training is not learning (see the README).
    plateau_loss: float = number("train.plateau_loss", float, 0, 100, lo_open=True)

    def __post_init__(self) -> None:
        if self.batch_size % (self.nproc * self.nnodes):
            raise ConfigError(f"'batch_size' = {self.batch_size} must split evenly over 'train.nproc' = "
                              f"{self.nproc} workers on each of 'train.nnodes' = {self.nnodes} machines (the batch "
                              f"is global: each worker trains on its share)")

    @property
    def workers(self) -> int:
        return self.nproc * self.nnodes


@dataclass(frozen=True)
class GenerationConfig:
    """The sampling a bundle ships as its default (generation_config.json); a generate call's options override it."""
    temperature: float = sampling("generation.temperature", "temperature")  # 0 = greedy
    top_k: int = sampling("generation.top_k", "top_k")  # 0 = no cut
    top_p: float = sampling("generation.top_p", "top_p")  # 1 = no cut


@dataclass(frozen=True)
class BudgetConfig:
    rss_mb: float = number("validate.budgets.rss_mb", float, 0, 1_000_000, lo_open=True)
    peak_mb: float = number("validate.budgets.peak_mb", float, 0, 1_000_000, lo_open=True)
    latency_p95_ms: float = number("validate.budgets.latency_p95_ms", float, 0, 1_000_000, lo_open=True)


@dataclass(frozen=True)
class ValidateConfig:
    # A prompt per language code; a corpus language without one gets the opening words of its held-out text.
    prompts: dict[str, str] = param("validate.prompts", _prompts_rule)
    # Samples continuing each language's prompt, each with its own seed derived from ``seed``: the quality
    # verdict is on their mean, so it does not turn on one sample's luck.
    samples_per_language: int = number("validate.samples_per_language", int, 1, 100)
    sample_tokens: int = number("validate.sample_tokens", int, 1, 4096)
    temperature: float = sampling("validate.temperature", "temperature")
    top_k: int = sampling("validate.top_k", "top_k")
    warmup_tokens: int = number("validate.warmup_tokens", int, 0, 1024)
    # Limits on a language's mean over its samples:
    max_repetition: float = number("validate.max_repetition", float, 0, 1)
    max_unknown_share: float = number("validate.max_unknown_share", float, 0, 1)
    max_whitespace_share: float = number("validate.max_whitespace_share", float, 0, 1)
    min_language_share: float = number("validate.min_language_share", float, 0, 1)  # samples read as the language
    seed: int = seed_field()
    budgets: BudgetConfig = subsection("validate.budgets", BudgetConfig)


@dataclass(frozen=True)
class Config:
    corpus_name: CorpusName
    tokenizer_name: TokenizerName
    corpus: CorpusConfig
    split: SplitConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    generation: GenerationConfig
    validate: ValidateConfig

    def __post_init__(self) -> None:
        """The names must say what the files hold: the corpus's languages (where params name them all; the
        download stage checks the rest) and the vocabulary size."""
        languages = [source.language for source in self.corpus.books]
        if all(languages):
            self.corpus_name.check_languages(languages)
        expected = paths.tokenizer_name(self.corpus_name.name, self.tokenizer.vocab_size)
        if self.tokenizer_name.name != expected:
            raise ConfigError(f"'names.tokenizer' = {self.tokenizer_name.name!r} does not say what the tokenizer is "
                              f"(a {self.corpus_name.name} corpus, vocab_size {self.tokenizer.vocab_size}): set it to "
                              f"{expected!r} (`dvc exp run -S names.tokenizer={expected}`; "
                              f"./scripts/train_pipeline.sh sets it)")


_SECTION_TYPES = (CorpusName, TokenizerName, CorpusConfig, SplitConfig, TokenizerConfig, ModelConfig, TrainConfig,
                  GenerationConfig, ValidateConfig)
_NESTED_TYPES = (BudgetConfig,)


def _read_from_params(f: dataclasses.Field) -> bool:
    """A field read from a params.yaml key (the others a section derives from those)."""
    return f.init


def params_keys(*sections: type) -> list[str]:
    """The params.yaml keys the given section classes read, in declaration order."""
    keys: list[str] = []
    for section in sections:
        for f in filter(_read_from_params, dataclasses.fields(section)):
            nested = f.metadata.get("section")
            for key in params_keys(nested) if nested else [f.metadata["key"]]:
                if key not in keys:
                    keys.append(key)
    return keys


def check_field(section: type, name: str, value: Any) -> Any:
    """``value`` as section field ``name`` takes it, by that field's rule; raises ConfigError naming its key."""
    meta = next(f.metadata for f in dataclasses.fields(section) if f.name == name)
    return meta["rule"](meta["key"], value)


# --- building from the parsed file ---------------------------------------------------------------

def _lookup(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"missing key '{key}'")
        node = node[part]
    return node


def _build(section: type, raw: Mapping[str, Any]) -> Any:
    values = {}
    for f in filter(_read_from_params, dataclasses.fields(section)):
        nested = f.metadata.get("section")
        values[f.name] = _build(nested, raw) if nested else f.metadata["rule"](f.metadata["key"],
                                                                               _lookup(raw, f.metadata["key"]))
    return section(**values)


def _leaf_keys(raw: Mapping[str, Any], known: list[str], prefix: str = "") -> list[str]:
    """The dotted keys of ``raw``'s values; a known key's value is one value even if it is a mapping."""
    keys = []
    for name, value in raw.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and dotted not in known:
            keys.extend(_leaf_keys(value, known, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    if not key.isprintable():
        return f"unknown key {key!r}: {hint}delete it from params.yaml"
    return (f"unknown key '{key}': {hint}delete it from params.yaml (`dvc exp run -S '~{key}'` does; "
            f"`-S +{key}=...` is what adds a key)")


def config_from_dict(raw: Any, source: str = "params.yaml") -> Config:
    """Validate parsed params; raises ConfigError naming ``source``, the first bad key and what it allows."""
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError("the top level must be a mapping of keys to values")
        known = params_keys(*_SECTION_TYPES)
        unknown = [k for k in _leaf_keys(raw, known) if k not in known]
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0], known))
        return Config(*(_build(section, raw) for section in _SECTION_TYPES))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def names_called_for(raw: Any, source: str = "params.yaml") -> dict[str, str]:
    """The ``names.*`` that parsed params call for: from the corpus's languages (names.corpus as it stands where a
    source leaves its language to its Gutenberg header) and vocab_size. ConfigError for a bad corpus or vocabulary."""
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError("the top level must be a mapping of keys to values")
        corpus, tokenizer = _build(CorpusConfig, raw), _build(TokenizerConfig, raw)
        languages = [book.language for book in corpus.books]
        name = paths.corpus_name(languages) if all(languages) else _file_name_rule(
            "names.corpus", _lookup(raw, "names.corpus"))
        return {"corpus": name, "tokenizer": paths.tokenizer_name(name, tokenizer.vocab_size)}
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def sections_read_by(stage: Callable[..., Any]) -> list[type]:
    """The config section types (nested ones too) a stage function takes: what it reads of params.yaml."""
    hints = typing.get_type_hints(stage)
    return [t for t in hints.values() if t in _SECTION_TYPES + _NESTED_TYPES]


def parse_yaml(text: str, source: str) -> Any:
    """YAML 1.2 as DVC parses it (ruamel.yaml, safe), with anchors and aliases refused."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.events import AliasEvent

    yaml = YAML(typ="safe")
    try:
        if any(isinstance(event, AliasEvent) for event in yaml.parse(text)):
            raise ConfigError(f"{source}: YAML aliases (*name) are not allowed: write each value out")
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem or exc.context}") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None


def load_config(path: Path | str = PARAMS_FILE) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return config_from_dict(parse_yaml(text, str(path)) or {}, str(path))
