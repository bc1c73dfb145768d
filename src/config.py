"""The one typed configuration of the pipeline, loaded from ``params.yaml`` and validated once.

Every stage receives the section objects it needs, never the raw dict. Each field records the
``params.yaml`` key it comes from, so ``dvc.yaml`` can declare exactly the keys a stage reads
(``params_keys``), and a test keeps the two in agreement.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import yaml

PARAMS_FILE = Path("params.yaml")
LANGUAGES = ("en", "es")


class ConfigError(ValueError):
    """A params.yaml value is missing, of the wrong type, or out of its allowed range."""


def _key(name: str, **meta: Any) -> Any:
    """A dataclass field bound to the params.yaml key ``name`` (dotted for sections)."""
    return field(metadata={"key": name, **meta})


@dataclass(frozen=True)
class BookSource:
    name: str
    url: str
    language: str
    sha256: str
    # A source without Gutenberg START/END markers is refused unless this is set.
    allow_unmarked: bool = False

    @property
    def file_name(self) -> str:
        """The name the book has on Gutenberg, in a mirror and in data/raw/."""
        return Path(urlparse(self.url).path).name


@dataclass(frozen=True)
class CorpusConfig:
    sources: tuple[BookSource, ...] = _key("corpus.sources")
    timeout_s: float = _key("corpus.timeout_s")
    retries: int = _key("corpus.retries")
    backoff_s: float = _key("corpus.backoff_s")
    max_download_mb: float = _key("corpus.max_download_mb")
    min_free_disk_gb: float = _key("corpus.min_free_disk_gb")


@dataclass(frozen=True)
class SplitConfig:
    # The last ``holdout_fraction`` of each book is validation text; the rest trains.
    holdout_fraction: float = _key("split.holdout_fraction")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = _key("vocab_size")
    model_type: str = _key("tokenizer.model_type")
    character_coverage: float = _key("tokenizer.character_coverage")
    seed: int = _key("seed")


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = _key("model.n_layers")
    n_heads: int = _key("model.n_heads")
    d_model: int = _key("model.d_model")
    d_ff: int = _key("model.d_ff")
    dropout: float = _key("model.dropout")
    context_length: int = _key("max_seq_length")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _key("epochs")
    batch_size: int = _key("batch_size")
    learning_rate: float = _key("learning_rate")
    max_seq_length: int = _key("max_seq_length")
    seed: int = _key("seed")
    weight_decay: float = _key("train.weight_decay")
    warmup_steps: int = _key("train.warmup_steps")
    min_lr_ratio: float = _key("train.min_lr_ratio")
    grad_clip: float = _key("train.grad_clip")
    eval_batch_size: int = _key("train.eval_batch_size")
    checkpoint_every: int = _key("train.checkpoint_every")
    # bf16 autocast runs the matrix products in bfloat16 (weights and optimizer stay fp32).
    precision: str = _key("train.precision")
    # torch.compile the training step's forward and loss: slower to start, faster per step.
    compile: bool = _key("train.compile")
    # Where training runs ("auto": CUDA when PyTorch sees it, else the CPU) and in how many processes
    # (more than 1: the stage launches itself through torchrun, DDP over gloo on CPU, nccl on CUDA).
    device: str = _key("train.device")
    nproc: int = _key("train.nproc")
    # An epoch-2+ validation loss above this means training is not learning (see the README).
    plateau_loss: float = _key("train.plateau_loss")


@dataclass(frozen=True)
class BudgetConfig:
    rss_mb: float = _key("validate.budgets.rss_mb")
    peak_mb: float = _key("validate.budgets.peak_mb")
    latency_p95_ms: float = _key("validate.budgets.latency_p95_ms")


@dataclass(frozen=True)
class ValidateConfig:
    prompt_en: str = _key("validate.prompt_en")
    prompt_es: str = _key("validate.prompt_es")
    sample_tokens: int = _key("validate.sample_tokens")
    temperature: float = _key("validate.temperature")
    top_k: int = _key("validate.top_k")
    warmup_tokens: int = _key("validate.warmup_tokens")
    max_repetition: float = _key("validate.max_repetition")
    max_unknown_share: float = _key("validate.max_unknown_share")
    max_whitespace_share: float = _key("validate.max_whitespace_share")
    seed: int = _key("seed")
    budgets: BudgetConfig = _key("validate.budgets")


@dataclass(frozen=True)
class Config:
    corpus: CorpusConfig
    split: SplitConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    validate: ValidateConfig


def params_keys(*sections: type) -> list[str]:
    """The params.yaml keys the given section classes read, in declaration order."""
    keys: list[str] = []
    for section in sections:
        for f in dataclasses.fields(section):
            nested = _NESTED_SECTIONS.get(f.metadata.get("key"))
            for key in params_keys(nested) if nested else [f.metadata["key"]]:
                if key not in keys:
                    keys.append(key)
    return keys


# --- validation -----------------------------------------------------------------------------

def _lookup(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"params.yaml: missing key '{key}'")
        node = node[part]
    return node


def _number(raw: Mapping[str, Any], key: str, kind: type, lo: float, hi: float,
            *, lo_open: bool = False) -> Any:
    value = _lookup(raw, key)
    lo_bracket = "(" if lo_open else "["
    allowed = f"{'an integer' if kind is int else 'a number'} in {lo_bracket}{lo}, {hi}]"
    is_bool = isinstance(value, bool)
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if is_bool or not ok_type or (kind is float and not math.isfinite(value)):
        raise ConfigError(f"params.yaml: '{key}' = {value!r} is not valid: must be {allowed}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise ConfigError(f"params.yaml: '{key}' = {value!r} is out of range: must be {allowed}")
    return kind(value)


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _lookup(raw, key)
    if value not in choices:
        raise ConfigError(
            f"params.yaml: '{key}' = {value!r} is not allowed: must be one of {', '.join(choices)}")
    return value


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = _lookup(raw, key)
    if not isinstance(value, bool):
        raise ConfigError(f"params.yaml: '{key}' = {value!r} is not valid: must be true or false")
    return value


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = _lookup(raw, key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"params.yaml: '{key}' = {value!r} is not valid: must be a non-empty string")
    return value


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _sources(raw: Mapping[str, Any]) -> tuple[BookSource, ...]:
    key = "corpus.sources"
    items = _lookup(raw, key)
    if not isinstance(items, list) or not items:
        raise ConfigError(f"params.yaml: '{key}' must be a non-empty list of books")
    books: list[BookSource] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"params.yaml: '{where}' must be a mapping with name, url, language, sha256")
        unknown = set(item) - {f.name for f in dataclasses.fields(BookSource)}
        if unknown:
            raise ConfigError(f"params.yaml: '{where}' has unknown keys: {', '.join(sorted(unknown))}")
        for required in ("name", "url", "language", "sha256"):
            if not isinstance(item.get(required), str) or not item[required]:
                raise ConfigError(f"params.yaml: '{where}.{required}' must be a non-empty string")
        if not _NAME.match(item["name"]):
            raise ConfigError(f"params.yaml: '{where}.name' = {item['name']!r} may only use letters, digits, '_', '.', '-'")
        if item["language"] not in LANGUAGES:
            raise ConfigError(f"params.yaml: '{where}.language' = {item['language']!r} is not allowed: "
                              f"must be one of {', '.join(LANGUAGES)}")
        url = urlparse(item["url"])
        if url.scheme not in ("http", "https") or not url.netloc or not Path(url.path).name:
            raise ConfigError(f"params.yaml: '{where}.url' = {item['url']!r} must be an http(s) URL of a file")
        if not _SHA256.match(item["sha256"]):
            raise ConfigError(f"params.yaml: '{where}.sha256' = {item['sha256']!r} must be 64 lowercase hex digits")
        if not isinstance(item.get("allow_unmarked", False), bool):
            raise ConfigError(f"params.yaml: '{where}.allow_unmarked' must be true or false")
        books.append(BookSource(**item))
    for attr in ("name", "file_name"):
        seen = [getattr(b, attr) for b in books]
        dupes = sorted({v for v in seen if seen.count(v) > 1})
        if dupes:
            raise ConfigError(f"params.yaml: '{key}' has duplicate book {attr}s: {', '.join(dupes)}")
    return tuple(books)


_SECTION_TYPES = (CorpusConfig, SplitConfig, TokenizerConfig, ModelConfig, TrainConfig, ValidateConfig)
_NESTED_SECTIONS = {"validate.budgets": BudgetConfig}

_SECTION_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "corpus": lambda raw: CorpusConfig(
        sources=_sources(raw),
        timeout_s=_number(raw, "corpus.timeout_s", float, 0.1, 3600),
        retries=_number(raw, "corpus.retries", int, 0, 20),
        backoff_s=_number(raw, "corpus.backoff_s", float, 0, 600),
        max_download_mb=_number(raw, "corpus.max_download_mb", float, 0, 10_000, lo_open=True),
        min_free_disk_gb=_number(raw, "corpus.min_free_disk_gb", float, 0, 1_000_000),
    ),
    "split": lambda raw: SplitConfig(
        holdout_fraction=_number(raw, "split.holdout_fraction", float, 0.01, 0.5),
    ),
    "tokenizer": lambda raw: TokenizerConfig(
        # The token dataset is stored as uint16, so ids must stay below 65536.
        vocab_size=_number(raw, "vocab_size", int, 64, 65536),
        model_type=_choice(raw, "tokenizer.model_type", ("unigram", "bpe")),
        character_coverage=_number(raw, "tokenizer.character_coverage", float, 0.9, 1.0),
        seed=_number(raw, "seed", int, 0, 2**31 - 1),
    ),
    "model": lambda raw: ModelConfig(
        n_layers=_number(raw, "model.n_layers", int, 1, 64),
        n_heads=_number(raw, "model.n_heads", int, 1, 64),
        d_model=_number(raw, "model.d_model", int, 8, 4096),
        d_ff=_number(raw, "model.d_ff", int, 8, 16384),
        dropout=_number(raw, "model.dropout", float, 0, 0.9),
        context_length=_number(raw, "max_seq_length", int, 8, 8192),
    ),
    "train": lambda raw: TrainConfig(
        epochs=_number(raw, "epochs", int, 1, 10_000),
        batch_size=_number(raw, "batch_size", int, 1, 4096),
        learning_rate=_number(raw, "learning_rate", float, 0, 1, lo_open=True),
        max_seq_length=_number(raw, "max_seq_length", int, 8, 8192),
        seed=_number(raw, "seed", int, 0, 2**31 - 1),
        weight_decay=_number(raw, "train.weight_decay", float, 0, 1),
        warmup_steps=_number(raw, "train.warmup_steps", int, 0, 1_000_000),
        min_lr_ratio=_number(raw, "train.min_lr_ratio", float, 0, 1),
        grad_clip=_number(raw, "train.grad_clip", float, 0, 1000, lo_open=True),
        eval_batch_size=_number(raw, "train.eval_batch_size", int, 1, 4096),
        checkpoint_every=_number(raw, "train.checkpoint_every", int, 1, 10_000),
        precision=_choice(raw, "train.precision", ("bf16", "fp32")),
        compile=_flag(raw, "train.compile"),
        device=_choice(raw, "train.device", ("auto", "cpu", "cuda")),
        nproc=_number(raw, "train.nproc", int, 1, 256),
        plateau_loss=_number(raw, "train.plateau_loss", float, 0, 100, lo_open=True),
    ),
    "validate": lambda raw: ValidateConfig(
        prompt_en=_text(raw, "validate.prompt_en"),
        prompt_es=_text(raw, "validate.prompt_es"),
        sample_tokens=_number(raw, "validate.sample_tokens", int, 1, 4096),
        temperature=_number(raw, "validate.temperature", float, 0, 10),
        top_k=_number(raw, "validate.top_k", int, 0, 65536),
        warmup_tokens=_number(raw, "validate.warmup_tokens", int, 0, 1024),
        max_repetition=_number(raw, "validate.max_repetition", float, 0, 1),
        max_unknown_share=_number(raw, "validate.max_unknown_share", float, 0, 1),
        max_whitespace_share=_number(raw, "validate.max_whitespace_share", float, 0, 1),
        seed=_number(raw, "seed", int, 0, 2**31 - 1),
        budgets=BudgetConfig(
            rss_mb=_number(raw, "validate.budgets.rss_mb", float, 0, 1_000_000, lo_open=True),
            peak_mb=_number(raw, "validate.budgets.peak_mb", float, 0, 1_000_000, lo_open=True),
            latency_p95_ms=_number(raw, "validate.budgets.latency_p95_ms", float, 0, 1_000_000, lo_open=True),
        ),
    ),
}


def _check_model_shape(model: ModelConfig) -> None:
    if model.d_model % model.n_heads or (model.d_model // model.n_heads) % 2:
        raise ConfigError(f"params.yaml: 'model.d_model' = {model.d_model} must split into 'model.n_heads' = "
                          f"{model.n_heads} heads of an even width (rotary positions rotate pairs)")


def _leaf_keys(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in raw.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            keys.extend(_leaf_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed params.yaml; raises ConfigError naming the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError("params.yaml: the top level must be a mapping of keys to values")
    known = set(params_keys(*_SECTION_TYPES))
    unknown = [k for k in _leaf_keys(raw) if k not in known]
    if unknown:
        raise ConfigError(f"params.yaml: unknown key '{unknown[0]}' (known keys: {', '.join(sorted(known))})")
    sections = {name: build(raw) for name, build in _SECTION_BUILDERS.items()}
    _check_model_shape(sections["model"])
    train = sections["train"]
    if train.batch_size % train.nproc:
        raise ConfigError(f"params.yaml: 'batch_size' = {train.batch_size} must split evenly over 'train.nproc' = "
                          f"{train.nproc} workers (the batch is global: each worker trains on its share)")
    return Config(**sections)


def sections_read_by(stage: Callable[..., Any]) -> list[type]:
    """The config section types a stage function takes: what it reads of params.yaml."""
    hints = typing.get_type_hints(stage)
    return [t for t in hints.values() if t in _SECTION_TYPES]


def load_config(path: Path | str = PARAMS_FILE) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(raw or {})
