import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src import paths
from src.config import (BookSource, ConfigError, CorpusConfig, ModelConfig, SplitConfig, TokenizerConfig,
                        TrainConfig, check_field, check_url, config_from_dict, load_config, names_called_for,
                        params_keys)
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
        8, 32, 0.006, 128)
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
    ("train.compile", "yes", "'train.compile' = 'yes' is not valid: must be auto, true or false"),
    ("train.precision", "fp16", "'train.precision' = 'fp16' is not allowed: must be one of auto, bf16, fp32"),
    ("model.dropout", 0.95, "'model.dropout' = 0.95 is out of range: must be a number in [0, 0.9]"),
    ("train.device", "tpu", "'train.device' = 'tpu' is not allowed: must be one of auto, cpu, cuda"),
    ("train.nproc", 0, "'train.nproc' = 0 is out of range: must be an integer in [1, 256]"),
    ("train.nproc", 5, "'batch_size' = 32 must split evenly over 'train.nproc' = 5 workers"),
    ("corpus.parallel_downloads", 0, "'corpus.parallel_downloads' = 0 is out of range: must be an integer in [1, 64]"),
    ("tokenizer.sample_mb", 0, "'tokenizer.sample_mb' = 0 is out of range: must be a number in (0, 100000]"),
    ("corpus.sources_file", "shelf.csv", "'corpus.sources_file' = 'shelf.csv' must be in books/"),
    ("corpus.sources_file", "books/shelf.txt", "'corpus.sources_file' = 'books/shelf.txt' is not valid: must be a "
                                               ".csv or .jsonl file in books/, or null"),
    ("corpus.sources_file", "books/none.csv", "'corpus.sources_file' = 'books/none.csv': no such file"),
])
def test_bad_values_name_the_key_the_value_and_the_range(key, value, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_value(key, value))
    assert expected in str(err.value)


def source(**changes):
    base = dict(name="book", url="https://example.org/files/book.txt", language="en", sha256="a" * 64)
    return [{**base, **changes}]


@pytest.mark.parametrize("books, expected", [
    (source(language="xx"), "'corpus.sources[0].language' = 'xx' is not an ISO 639-1 code"),
    (source(language="French"), "'corpus.sources[0].language' = 'French' is not an ISO 639-1 code"),
    (source(sha256=None), "'corpus.sources[0].sha256' is required for an http(s) source"),
    (source(format="markdown"), "'corpus.sources[0].format' = 'markdown' is not allowed: must be one of gutenberg, plain"),
    (source(url="/"), "must be an http(s) URL of a file or a local file's or directory's path"),
    (source(url="file:///books/a.txt"), "must be an http(s) URL of a file or a local file's or directory's path"),
    (source(url="https://a.org/x/a.txt") + source(name="other", url="https://b.org/a.txt"),
     "duplicate book file_names: a.txt"),
    (source(sha256="XYZ"), "'corpus.sources[0].sha256' = 'XYZ' must be 64 lowercase hex digits"),
    (source(url="ftp://example.org/book.txt"), "'corpus.sources[0].url' = 'ftp://example.org/book.txt' must be an http(s) URL"),
    (source(url="https://example.org/"), "must be an http(s) URL of a file"),
    (source(url="https://example.org/books/"), "must be an http(s) URL of a file"),
    (source(url="https://example.org/books/.."), "must be an http(s) URL of a file"),
    (source(url="https:///book.txt"), "must be an http(s) URL of a file"),
    (source(url="https://example.org/" + "b" * 300 + ".txt"), "its file name is 304 characters long"),
    (source(url="http://[::1/pg11.txt"), "'corpus.sources[0].url' = 'http://[::1/pg11.txt' is not a valid URL "
                                         "(Invalid IPv6 URL)"),
    (source(name="a b"), "'corpus.sources[0].name' = 'a b' may only use"),
    (source(edition=2), "'corpus.sources[0]' has unknown keys: edition"),
    (source(name=""), "'corpus.sources[0].name' must be a non-empty string"),
    (source() + source(), "duplicate book names: book"),
    ([], "'corpus.sources' is empty and 'corpus.sources_file' is null: list the books in one of them"),
    ({"name": "a"}, "'corpus.sources' must be a list of books"),
    (source(url="books/shelf/"), "'corpus.sources[0].sha256' pins a file, and 'books/shelf/' is a directory"),
])
def test_bad_sources_are_refused(books, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_value("corpus.sources", books))
    assert expected in str(err.value)


def test_unknown_and_missing_keys_are_named():
    params = project_params()
    params["epoch"] = 30
    with pytest.raises(ConfigError, match="unknown key 'epoch': did you mean 'epochs'\\? delete it from params.yaml"):
        config_from_dict(params)
    params = project_params()
    params["foo"] = 1  # what `dvc exp run -S +foo=1` leaves in params.yaml
    with pytest.raises(ConfigError, match="unknown key 'foo': delete it from params.yaml \\(`dvc exp run -S '~foo'`"):
        config_from_dict(params)
    params = project_params()
    del params["tokenizer"]["model_type"]
    with pytest.raises(ConfigError, match="missing key 'tokenizer.model_type'"):
        config_from_dict(params)


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("vocab_size: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1: did not find expected node content"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_bytes(b"seed: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_file_name_comes_from_the_url_or_the_path():
    book = BookSource("b", "https://www.gutenberg.org/cache/epub/11/pg11.txt", "en", "a" * 64)
    assert book.file_name == "pg11.txt" and not book.is_local
    assert BookSource("n", "books/notes.txt").file_name == "notes.txt" and BookSource("n", "/srv/n.txt").is_local


def test_a_local_book_in_books_needs_no_sha256_or_language_and_any_language_code_loads():
    books = [{"name": "notes", "url": "books/notes_fr.txt", "format": "plain", "language": "fr"},
             {"name": "alice", "url": "https://example.org/pg11.txt", "sha256": "a" * 64},
             {"name": "zh", "url": "/srv/books/zh.txt", "language": "zh", "sha256": "b" * 64}]
    sources = config_from_dict(with_value("corpus.sources", books)).corpus.sources
    assert [(s.language, s.sha256, s.format) for s in sources] == [("fr", None, "plain"), (None, "a" * 64, "gutenberg"),
                                                                   ("zh", "b" * 64, "gutenberg")]
    assert [s.in_books for s in sources] == [True, False, False]


@pytest.mark.parametrize("url", ["/srv/books/zh.txt", "notes.txt", "tests/fixtures/notes_fr.txt", "books/../notes.txt"])
def test_a_local_book_outside_books_must_be_pinned(url):
    """DVC hashes books/ (the download stage's dependency); a file anywhere else changes unseen unless pinned."""
    books = [{"name": "notes", "url": url, "language": "fr"}]
    with pytest.raises(ConfigError, match=r"'corpus.sources\[0\].sha256' is required for a local file outside books/"):
        config_from_dict(with_value("corpus.sources", books))


@pytest.mark.parametrize("languages, vocab_size, corpus, tokenizer", [
    (["en", "en", "es"], 8000, "bilingual", "bilingual_8k"),  # the quickstart's names
    (["fr"], 16000, "fr", "fr_16k"),
    (["fr", "fr"], 1500, "fr", "fr_1500"),
    (["en", "es", "fr"], 32000, "multilingual", "multilingual_32k"),
])
def test_names_say_what_the_corpus_and_tokenizer_hold(languages, vocab_size, corpus, tokenizer):
    assert paths.derived_names(languages, vocab_size) == {"corpus": corpus, "tokenizer": tokenizer}
    assert paths.corpus_file(corpus).name == f"corpus_{corpus}.txt"
    assert paths.tokenizer_model(tokenizer).name == f"{tokenizer}.model"


def test_the_default_params_give_the_quickstarts_file_names():
    cfg = load_config(REPO_ROOT / "params.yaml")
    assert str(cfg.corpus_name.file) == "data/corpus_bilingual.txt"
    assert (str(cfg.tokenizer_name.model), str(cfg.tokenizer_name.vocab)) == ("data/bilingual_8k.model",
                                                                             "data/bilingual_8k.vocab")


def test_names_that_no_longer_say_what_the_files_hold_are_refused_with_the_right_ones():
    with pytest.raises(ConfigError, match=r"'names.tokenizer' = 'bilingual_8k' does not say what the tokenizer is "
                                          r"\(a bilingual corpus, vocab_size 16000\): set it to 'bilingual_16k'"):
        config_from_dict(with_value("vocab_size", 16000))
    french = [{"name": "notes", "url": "books/notes_fr.txt", "language": "fr"}]
    with pytest.raises(ConfigError, match=r"'names.corpus' = 'bilingual' does not say what the corpus holds \(fr\): "
                                          r"set it to 'fr'"):
        config_from_dict(with_value("corpus.sources", french))
    params = with_value("corpus.sources", french)
    params["vocab_size"] = 16000
    params["names"] = names_called_for(params)
    assert params["names"] == {"corpus": "fr", "tokenizer": "fr_16k"}
    assert str(config_from_dict(params).tokenizer_name.model) == "data/fr_16k.model"


def test_a_corpus_whose_languages_params_leave_to_gutenberg_headers_keeps_its_name_until_download():
    """A source without a language is named by its header, which only the download stage reads."""
    books = [{"name": "alice", "url": "https://example.org/pg11.txt", "sha256": "a" * 64}]
    assert config_from_dict(with_value("corpus.sources", books)).corpus_name.name == "bilingual"


@pytest.mark.parametrize("prompts, expected", [
    ({"en": "It was", "fr": "Il était"}, None),
    ({}, None),
    ({"english": "It was"}, "'validate.prompts.english': 'english' is not an ISO 639-1 language code"),
    ({"fr": ""}, "'validate.prompts.fr' = '' is not valid: must be a non-empty string"),
    (["It was"], "'validate.prompts' must map language codes to prompts"),
])
def test_validate_prompts_are_keyed_by_language(prompts, expected):
    if expected is None:
        assert config_from_dict(with_value("validate.prompts", prompts)).validate.prompts == prompts
    else:
        with pytest.raises(ConfigError) as err:
            config_from_dict(with_value("validate.prompts", prompts))
        assert expected in str(err.value)


def test_params_keys_follow_the_sections():
    assert params_keys(SplitConfig, TokenizerConfig) == [
        "split.holdout_fraction", "vocab_size", "tokenizer.model_type", "tokenizer.character_coverage",
        "tokenizer.threads", "tokenizer.sample_mb", "seed"]
    assert "corpus.sources" in params_keys(CorpusConfig)
    assert params_keys(TrainConfig)[:4] == ["epochs", "batch_size", "learning_rate", "max_seq_length"]


def write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_params_are_read_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S learning_rate=0.00005` writes YAML 1.2's `5e-05`: a float, not the string YAML 1.1 reads."""
    text = (REPO_ROOT / "params.yaml").read_text().replace("learning_rate: 0.006", "learning_rate: 5e-05")
    assert load_config(write(tmp_path, text)).train.learning_rate == 5e-05


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    lines = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9 ** 10 strings
    started = time.monotonic()
    with pytest.raises(ConfigError, match="YAML aliases \\(\\*name\\) are not allowed"):
        load_config(write(tmp_path, (REPO_ROOT / "params.yaml").read_text() + "\n".join(lines) + "\n"))
    assert time.monotonic() - started < 1.0


def test_check_field_applies_a_fields_rule_to_any_value():
    assert check_field(ModelConfig, "n_layers", 4) == 4
    with pytest.raises(ConfigError, match="'max_seq_length' = 99999 is out of range"):
        check_field(ModelConfig, "context_length", 99999)


# Values of every kind a careless or hostile edit (or `dvc exp run -S`) could put under any key.
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(params_keys(CorpusConfig, SplitConfig, TokenizerConfig, ModelConfig, TrainConfig)
                           + ["validate.budgets.rss_mb", "corpus", "validate", "model.extra", "new_top_level"]),
       value=ANY_VALUE)
def test_any_value_under_any_key_loads_or_is_named_in_one_line(key, value):
    params = project_params()
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    try:
        config_from_dict(params)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("params.yaml: ") and "\n" not in message
        assert key.split(".")[0] in message or "sources" in message or "must split" in message, message
    else:  # it loaded: then the value was one the key allows
        assert not (isinstance(value, float) and not math.isfinite(value))


@settings(max_examples=300, deadline=None, database=None)
@given(rest=st.text(alphabet=st.sampled_from(list("[]:/.%@?#a1 \\")), max_size=20))
def test_any_url_is_taken_or_named_in_one_line(rest):
    for url in (f"http://{rest}", f"https://{rest}/book.txt"):
        try:
            check_url("'corpus.sources[0].url'", url)
        except ConfigError as exc:
            assert str(exc).startswith("'corpus.sources[0].url' = ") and "\n" not in str(exc)


# --- books listed in a sources file, and directories of books -------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project root (stages run there: a sources file's path is from it), with a books/ folder."""
    (tmp_path / "books").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def with_sources(sources_file, sources=()):
    params = with_value("corpus.sources", list(sources))
    params["corpus"]["sources_file"] = sources_file
    return params


SHELF_CSV = """name,url,language,sha256,format
alice,https://example.org/pg11.txt,,%s,
notes, books/notes_fr.txt ,fr,,plain
""" % ("a" * 64)
SHELF_JSONL = """{"name": "alice", "url": "https://example.org/pg11.txt", "sha256": "%s"}

{"name": "notes", "path": "books/notes_fr.txt", "language": "fr", "format": "plain"}
""" % ("a" * 64)


@pytest.mark.parametrize("name, text", [("shelf.csv", SHELF_CSV), ("shelf.jsonl", SHELF_JSONL)])
def test_a_sources_file_lists_books_after_the_params_ones(project, name, text):
    (project / "books" / name).write_text(text)
    cfg = config_from_dict(with_sources(f"books/{name}", source(name="first")))
    corpus = cfg.corpus
    assert [s.name for s in corpus.sources] == ["first"]  # params.yaml's list, as written
    assert corpus.books == (
        BookSource("first", "https://example.org/files/book.txt", "en", "a" * 64),
        BookSource("alice", "https://example.org/pg11.txt", None, "a" * 64),
        BookSource("notes", "books/notes_fr.txt", "fr", None, "plain"))
    french_only = with_sources(f"books/{name}")
    french_only["names"]["corpus"] = "fr"
    assert names_called_for(french_only)["corpus"] == "fr"  # alice's language is her header's: names.* as they are


@pytest.mark.parametrize("text, expected", [
    ("name,url\nnotes,/srv/notes.txt\n", "books/shelf.csv line 2: 'sha256' is required for a local file outside"),
    ("name,url,edition\nnotes,books/n.txt,2\n", "books/shelf.csv line 2 has unknown keys: edition"),
    ("name,url\nnotes,books/n.txt,extra\n", "books/shelf.csv line 2: not one value for each column of the header"),
    ("name,url\nnotes\n", "books/shelf.csv line 2: not one value for each column of the header (name, url)"),
    ("name,url\nok,books/a.txt\n\nbad name,books/b.txt\n", "books/shelf.csv line 4: 'name' = 'bad name' may only use"),
    ("name,url,path\nnotes,books/n.txt,books/m.txt\n", "books/shelf.csv line 2 has both url and path: give one"),
    ('name,url\n"notes,books/n.txt\n', "books/shelf.csv line 2: not valid CSV"),
    ("name,url\na,books/a.txt\na,books/b.txt\n", "'corpus.sources' with books/shelf.csv has duplicate book names: a"),
])
def test_a_bad_row_of_a_sources_file_is_named_by_its_file_and_line(project, text, expected):
    (project / "books/shelf.csv").write_text(text)
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_sources("books/shelf.csv"))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("line, expected", [
    ('{"name": "a", "url": "books/a.txt", "language": "xx"}', "books/shelf.jsonl line 2: 'language' = 'xx' is not"),
    ('["a", "books/a.txt"]', "books/shelf.jsonl line 2 must be a mapping with name, url"),
    ('{"name": "a", "url": ', "books/shelf.jsonl line 2: not a JSON object"),
    ('{"name": "first", "url": "books/a.txt"}', "duplicate book names: first"),
])
def test_a_bad_line_of_a_json_lines_sources_file_is_named(project, line, expected):
    (project / "books/shelf.jsonl").write_text('{"name": "b", "url": "books/b.txt"}\n' + line + "\n")
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_sources("books/shelf.jsonl", source(name="first")))
    assert expected in str(err.value)


def test_a_directory_in_books_is_a_source_and_one_elsewhere_is_refused_in_one_line(project):
    (project / "books/shelf").mkdir()
    (project / "elsewhere").mkdir()
    shelf = {"name": "shelf", "url": "books/shelf", "language": "fr", "format": "plain"}
    params = with_value("corpus.sources", [shelf, {**shelf, "name": "all", "url": "books/"}])
    params["names"] = names_called_for(params)
    books = config_from_dict(params)
    assert [(b.is_directory, b.in_books) for b in books.corpus.books] == [(True, True), (True, True)]
    for url in ("elsewhere", str(project / "books/shelf"), "books/../elsewhere/"):
        with pytest.raises(ConfigError) as err:
            config_from_dict(with_value("corpus.sources", [{**shelf, "url": url}]))
        assert str(err.value) == (f"params.yaml: 'corpus.sources[0].url' = {url!r} is a directory outside books/: one "
                                  f"sha256 cannot pin a directory, DVC hashes books/: move it there")
