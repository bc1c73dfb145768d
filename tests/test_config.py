import pytest

from src.config import (BookSource, ConfigError, CorpusConfig, SplitConfig, TokenizerConfig, TrainConfig,
                        config_from_dict, load_config, params_keys)
from tests.conftest import REPO_ROOT, project_params


def with_value(dotted: str, value):
    params = project_params()
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return params


def test_project_params_load_with_the_seed_defaults():
    cfg = load_config(REPO_ROOT / "params.yaml")
    assert cfg.tokenizer.vocab_size == 8000
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.max_seq_length) == (
        8, 32, 0.001, 128)
    assert [s.file_name for s in cfg.corpus.sources] == ["pg1342.txt", "pg11.txt", "pg2000.txt"]
    assert [s.language for s in cfg.corpus.sources] == ["en", "en", "es"]
    assert cfg.split.holdout_fraction == 0.1
    assert cfg.tokenizer.model_type == "unigram" and cfg.tokenizer.character_coverage == 0.9995


@pytest.mark.parametrize("key, value, expected", [
    ("vocab_size", 10, "'vocab_size' = 10 is out of range: must be an integer in [64, 65536]"),
    ("vocab_size", 70000, "'vocab_size' = 70000 is out of range"),
    ("vocab_size", "8k", "'vocab_size' = '8k' is not valid: must be an integer"),
    ("vocab_size", 8000.5, "'vocab_size' = 8000.5 is not valid"),
    ("epochs", 0, "'epochs' = 0 is out of range: must be an integer in [1, 10000]"),
    ("epochs", True, "'epochs' = True is not valid"),
    ("learning_rate", 0, "'learning_rate' = 0 is out of range: must be a number in (0, 1]"),
    ("learning_rate", -0.1, "'learning_rate' = -0.1 is out of range"),
    ("batch_size", None, "'batch_size' = None is not valid"),
    ("split.holdout_fraction", 0.9, "'split.holdout_fraction' = 0.9 is out of range: must be a number in [0.01, 0.5]"),
    ("tokenizer.model_type", "wordpiece", "'tokenizer.model_type' = 'wordpiece' is not allowed: must be one of unigram, bpe"),
    ("tokenizer.character_coverage", 1.5, "'tokenizer.character_coverage' = 1.5 is out of range"),
    ("corpus.timeout_s", float("nan"), "'corpus.timeout_s' = nan is not valid"),
    ("train.compile", "yes", "'train.compile' = 'yes' is not valid: must be true or false"),
    ("train.precision", "fp16", "'train.precision' = 'fp16' is not allowed: must be one of bf16, fp32"),
    ("model.dropout", 0.95, "'model.dropout' = 0.95 is out of range: must be a number in [0, 0.9]"),
    ("train.device", "tpu", "'train.device' = 'tpu' is not allowed: must be one of auto, cpu, cuda"),
    ("train.nproc", 0, "'train.nproc' = 0 is out of range: must be an integer in [1, 256]"),
    ("train.nproc", 5, "'batch_size' = 32 must split evenly over 'train.nproc' = 5 workers"),
])
def test_bad_values_name_the_key_the_value_and_the_range(key, value, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_value(key, value))
    assert expected in str(err.value)


def source(**changes):
    base = dict(name="book", url="https://example.org/files/book.txt", language="en", sha256="a" * 64)
    return [{**base, **changes}]


@pytest.mark.parametrize("books, expected", [
    (source(language="fr"), "'corpus.sources[0].language' = 'fr' is not allowed: must be one of en, es"),
    (source(sha256="XYZ"), "'corpus.sources[0].sha256' = 'XYZ' must be 64 lowercase hex digits"),
    (source(url="ftp://example.org/book.txt"), "'corpus.sources[0].url' = 'ftp://example.org/book.txt' must be an http(s) URL"),
    (source(url="https://example.org/"), "must be an http(s) URL of a file"),
    (source(name="a b"), "'corpus.sources[0].name' = 'a b' may only use"),
    (source(edition=2), "'corpus.sources[0]' has unknown keys: edition"),
    (source(name=""), "'corpus.sources[0].name' must be a non-empty string"),
    (source() + source(), "duplicate book names: book"),
    ([], "'corpus.sources' must be a non-empty list"),
])
def test_bad_sources_are_refused(books, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_value("corpus.sources", books))
    assert expected in str(err.value)


def test_unknown_and_missing_keys_are_named():
    params = project_params()
    params["epoch"] = 30
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        config_from_dict(params)
    params = project_params()
    del params["tokenizer"]["model_type"]
    with pytest.raises(ConfigError, match="missing key 'tokenizer.model_type'"):
        config_from_dict(params)


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("vocab_size: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_file_name_comes_from_the_url():
    book = BookSource("b", "https://www.gutenberg.org/cache/epub/11/pg11.txt", "en", "a" * 64)
    assert book.file_name == "pg11.txt"


def test_params_keys_follow_the_sections():
    assert params_keys(SplitConfig, TokenizerConfig) == [
        "split.holdout_fraction", "vocab_size", "tokenizer.model_type", "tokenizer.character_coverage", "seed"]
    assert "corpus.sources" in params_keys(CorpusConfig)
    assert params_keys(TrainConfig)[:4] == ["epochs", "batch_size", "learning_rate", "max_seq_length"]
