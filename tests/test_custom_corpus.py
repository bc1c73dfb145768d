"""Custom corpora: local and http(s) books in any language, from params and from --corpus-url, through every stage."""

import hashlib
import json
import shutil

import pytest

from src.config import parse_yaml
from src.pipeline.corpus_sources import hydra_value, source_location, unique_name
from tests.conftest import REPO_ROOT, TINY_PARAMS, run_module, stages_run, write_params

FRENCH = REPO_ROOT / "tests/fixtures/notes_fr.txt"
PG11_SHA = "2bb7d5634ee2683a52fc0f016464124d35fc310f395f1b79d2ed0dc33c7f2a44"
PG2000_SHA = "485be638d952a55acbb944c964d0429418ca2da711df7bc48a36c612129ead9b"


def three_languages(server_url: str) -> list[dict]:
    """Alice (its language read from its Gutenberg header), Don Quijote (es) and French notes in a local plain file."""
    return [{"name": "alice", "url": f"{server_url}/pg11.txt", "sha256": PG11_SHA},
            {"name": "quijote", "url": f"{server_url}/pg2000.txt", "language": "es", "sha256": PG2000_SHA},
            {"name": "notes", "url": "books/notes_fr.txt", "language": "fr", "format": "plain"}]


@pytest.fixture
def workdir(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    (tmp_path / "books").mkdir()
    shutil.copy(FRENCH, tmp_path / "books/notes_fr.txt")
    return tmp_path


def download(workdir, sources, corpus_name="multilingual"):
    """The download stage on ``sources``; a corpus whose languages a header names needs its name set by hand."""
    write_params(workdir, {"corpus.sources": sources, "names.corpus": corpus_name})
    return run_module("src.pipeline.download", workdir)


def test_download_builds_a_corpus_of_local_and_http_books_in_three_languages(workdir, book_server):
    done = download(workdir, three_languages(book_server.url))
    assert done.returncode == 0, done.stderr
    languages = json.loads((workdir / "data/languages.json").read_text())
    assert sorted(languages) == ["en", "es", "fr"]
    french_words = " ".join(FRENCH.read_text().split())
    opening = languages["fr"]["opening"]
    assert len(opening.split()) == 6 and french_words.index(opening) > 0.8 * len(french_words)  # held-out text
    assert all(entry["held_out_characters"] >= 500 and entry["profile"] for entry in languages.values())
    sources = json.loads((workdir / "data/corpus_sources.json").read_text())["books"]
    assert [(b["name"], b["language"]) for b in sources] == [("alice", "en"), ("quijote", "es"), ("notes", "fr")]
    assert sources[2]["sha256"] == hashlib.sha256(FRENCH.read_bytes()).hexdigest()
    assert sources[2]["licence"] == "" and sources[0]["licence"].startswith("*** END")
    corpus = (workdir / "data/corpus_multilingual.txt").read_text()
    assert FRENCH.read_text().strip() in corpus and "*** START OF" not in corpus and "*** END OF" not in corpus
    metrics = json.loads((workdir / "metrics/corpus.json").read_text())["corpus"]
    assert sorted(metrics["languages"]) == ["en", "es", "fr"]


def test_a_corpus_name_its_books_headers_contradict_is_refused_with_the_right_one(workdir, book_server):
    """Alice names her language (English) only in her Gutenberg header: the download stage checks the name."""
    done = download(workdir, three_languages(book_server.url), corpus_name="bilingual")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert ("'names.corpus' = 'bilingual' does not say what the corpus holds (en, es, fr): set it to "
            "'multilingual'") in done.stderr
    assert not (workdir / "data/corpus_bilingual.txt").exists()


@pytest.mark.parametrize("change, message", [
    ({"language": None}, "the text names no language: an ISO 639-1 language; set corpus.sources[2].language"),
    ({"format": "gutenberg"}, "no Gutenberg START and END marker found"),
])
def test_a_local_book_that_says_too_little_is_refused_with_the_key_to_set(workdir, book_server, change, message):
    sources = three_languages(book_server.url)
    sources[2] = {k: v for k, v in {**sources[2], **change}.items() if v is not None}
    done = download(workdir, sources)
    assert done.returncode == 2 and message.split(":")[0] in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (workdir / "data/corpus_multilingual.txt").exists()


def test_a_language_with_too_little_held_out_text_is_refused(workdir, book_server):
    (workdir / "books/notes_fr.txt").write_text("Le matin où la rivière déborda, le village entier descendit.\n" * 40)
    done = download(workdir, three_languages(book_server.url))
    assert done.returncode == 2, done.stderr
    assert "language 'fr' (notes) has" in done.stderr and "it needs 500" in done.stderr
    assert "split.holdout_fraction" in done.stderr and "Traceback" not in done.stderr


def test_a_gutenberg_book_empty_after_stripping_is_refused(workdir, book_server):
    (workdir / "books/empty.txt").write_text("Language: French\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n"
                                             "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n")
    sources = three_languages(book_server.url) + [{"name": "empty", "url": "books/empty.txt"}]
    done = download(workdir, sources)
    assert done.returncode == 2 and "empty after stripping the Gutenberg header and footer" in done.stderr


def test_duplicate_names_and_unpinned_http_books_are_refused_before_any_work(workdir, book_server):
    sources = three_languages(book_server.url)
    for bad, message in (([*sources, {**sources[2], "url": "books/other.txt"}], "duplicate book names: notes"),
                         ([{**sources[0], "sha256": None}], "'corpus.sources[0].sha256' is required")):
        done = run_module("src.pipeline.check_params", workdir, "--set", f"corpus.sources={hydra_value(bad)}")
        assert done.returncode == 1 and message in done.stderr, done.stderr


def test_corpus_url_prints_the_pinned_sources_of_http_and_local_books(workdir, book_server, tmp_path):
    done = run_module("src.pipeline.corpus_sources", workdir, "--corpus-url", f"{book_server.url}/pg11.txt",
                      "--corpus-url", "books/notes_fr.txt", "--corpus-language", "fr", "--from-dir", str(workdir))
    assert done.returncode == 0, done.stderr
    key, _, value = done.stdout.strip().partition("=")
    entries = parse_yaml(value, "stdout")  # what check_params --set reads; DVC reads it with Hydra's grammar
    assert key == "corpus.sources" and entries == [
        {"name": "pg11", "url": f"{book_server.url}/pg11.txt", "language": "en", "sha256": PG11_SHA,
         "format": "gutenberg"},
        {"name": "notes_fr", "url": "books/notes_fr.txt", "language": "fr",
         "sha256": hashlib.sha256(FRENCH.read_bytes()).hexdigest(), "format": "plain"}]
    assert f"sha256 {PG11_SHA}, language en (from its Gutenberg header)" in done.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--corpus-url", "books/notes_fr.txt"], 2, "does not name its language: give its ISO 639-1 code"),
    (["--corpus-url", "books/notes_fr.txt", "--corpus-language", "french"], 1, "'french' is not an ISO 639-1 code"),
    (["--corpus-language", "fr"], 1, "--corpus-language must follow the --corpus-url"),
    (["--corpus-url", "books/missing.txt"], 2, "does not exist"),
    (["--corpus-url", "http://[::1/pg11.txt"], 1, "--corpus-url = 'http://[::1/pg11.txt' is not a valid URL"),
    (["--corpus-url", "http://127.0.0.1:port/pg11.txt"], 2, "is not a valid URL (nonnumeric port: 'port')"),
    (["--corpus-url", "b" * 5000], 1, "its file name is 5000 characters long, more than the 200"),
    (["--corpus-url", "b/" * 2500 + "book.txt"], 2, "cannot be read (File name too long)"),
])
def test_corpus_url_refusals(workdir, args, code, message):
    done = run_module("src.pipeline.corpus_sources", workdir, *args, "--from-dir", str(workdir))
    assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_source_names_and_locations(tmp_path):
    taken: set[str] = set()
    assert [unique_name(u, taken) for u in ("a/notes fr.txt", "b/notes fr.txt", "https://x/pg11.txt")] == \
        ["notes_fr", "notes_fr_2", "pg11"]
    root = tmp_path / "repo"
    assert source_location("books/a.txt", root, root) == "books/a.txt"
    assert source_location("../a.txt", root, root) == str(tmp_path / "a.txt")
    assert hydra_value([{"name": "a", "url": 'say "hi"\\'}]) == '[{name: "a", url: "say \\"hi\\"\\\\"}]'


# --- the whole pipeline on a corpus of the user's -----------------------------------------------------------------

@pytest.mark.slow
def test_three_languages_through_dvc_repro_and_an_edited_local_book_reruns_from_download(tiny_repo, book_server):
    shutil.copy(FRENCH, tiny_repo.path / "books/notes_fr.txt")
    tiny_repo.set_params({"corpus.sources": three_languages(book_server.url), "names.corpus": "multilingual"})
    tiny_repo.run("git", "add", "books", "params.yaml")
    tiny_repo.run("git", "commit", "-qm", "three languages")
    repo = tiny_repo.path

    first = tiny_repo.dvc("repro", check=False)  # validate may judge a 2-epoch model's samples either way
    assert stages_run(first.stdout)[-1] == "validate", first.stdout + first.stderr
    tokenizer = json.loads((repo / "metrics/tokenizer.json").read_text())["tokenizer"]
    train = json.loads((repo / "metrics/train.json").read_text())["train"]
    history = json.loads((repo / "data/training_metrics.json").read_text())["history"]
    samples = json.loads((repo / "metrics/samples.json").read_text())
    validate = json.loads((repo / "metrics/validate.json").read_text())["validate"]
    assert sorted(tokenizer["held_out"]) == sorted(train["best_bits_per_byte_by_language"]) == ["en", "es", "fr"]
    assert all(sorted(row["validation_bits_per_byte_by_language"]) == ["en", "es", "fr"] for row in history)
    assert sorted(samples) == sorted(validate["quality"]) == ["en", "es", "fr"]
    assert samples["en"]["prompt"] == TINY_PARAMS.get("validate.prompts.en", "It is a truth universally acknowledged")
    opening = json.loads((repo / "data/languages.json").read_text())["fr"]["opening"]
    assert samples["fr"]["prompt"] == opening  # no validate.prompts.fr: the held-out text's opening words
    provenance = json.loads((repo / "dist/tinytransformer/provenance.json").read_text())
    card = (repo / "dist/tinytransformer/README.md").read_text()
    assert [b["language"] for b in provenance["books"]] == ["en", "es", "fr"]
    assert "- fr" in card.split("---")[1] and "Not from Project Gutenberg: notes" in card
    answer = tiny_repo.run("python", "-m", "src.cli.minimal_llm", "generate", "--prompt", "Le matin", "--max_tokens", "5",
                           "--json")
    assert json.loads(answer.stdout)["languages"] == ["en", "es", "fr"]

    untouched = tiny_repo.dvc("repro", "bundle")
    assert stages_run(untouched.stdout) == []
    with (repo / "books/notes_fr.txt").open("a") as f:
        f.write("\nUn dernier paragraphe, ajouté plus tard, change le livre.\n")
    edited = tiny_repo.dvc("repro", "bundle")
    # check_params depends on books/ (a sources file there is checked before download loses its outputs)
    assert stages_run(edited.stdout) == ["check_params", "download", "tokenize", "train", "bundle"], edited.stdout


@pytest.mark.slow
def test_train_pipeline_corpus_url_runs_an_experiment_on_the_given_books(tiny_repo, book_server, tmp_path):
    notes = tmp_path / "elsewhere/notes_fr.txt"
    notes.parent.mkdir()
    shutil.copy(FRENCH, notes)
    done = tiny_repo.run("./scripts/train_pipeline.sh", "--corpus-url", f"{book_server.url}/pg11.txt",
                         "--corpus-url", str(notes), "--corpus-language", "fr", check=False,
                         env={"TT_CORPUS_MIRROR": ""})
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: validate judged the 2-epoch model's samples
    assert f"sha256 {PG11_SHA}, language en (from its Gutenberg header)" in done.stderr
    sources = parse_yaml((tiny_repo.path / "params.yaml").read_text(), "params.yaml")["corpus"]["sources"]
    assert [(s["name"], s["url"], s["language"], len(s["sha256"])) for s in sources] == [
        ("pg11", f"{book_server.url}/pg11.txt", "en", 64), ("notes_fr", str(notes), "fr", 64)]
    shown = tiny_repo.dvc("exp", "show", "--json").stdout
    assert "notes_fr" in shown


# --- a shelf: a directory of books, and a sources file -------------------------------------------------------------

def test_a_directorys_books_and_a_sources_files_join_the_corpus_read_where_they_are(workdir, book_server):
    shelf = workdir / "books/shelf"
    (shelf / "tome2").mkdir(parents=True)
    french = FRENCH.read_text()
    (shelf / "b.txt").write_text(french)
    (shelf / "tome2/a.txt").write_text(french.upper())
    (shelf / "notes.md").write_text("not a book: only the .txt files are")
    (workdir / "books/list.csv").write_text(f"name,url,language,sha256\nquijote,{book_server.url}/pg2000.txt,es,"
                                            f"{PG2000_SHA}\n")
    (workdir / "data/raw").mkdir(parents=True)
    (workdir / "data/raw/notes_fr.txt").write_text("a copy an earlier version made of a local book")
    write_params(workdir, {"corpus.sources": [{"name": "shelf", "url": "books/shelf/", "language": "fr",
                                               "format": "plain"}],
                           "corpus.sources_file": "books/list.csv", "names.corpus": "bilingual"})
    done = run_module("src.pipeline.download", workdir)
    assert done.returncode == 0, done.stderr
    books = json.loads((workdir / "data/corpus_sources.json").read_text())["books"]
    assert [(b["name"], b["url"], b["language"]) for b in books] == [
        ("shelf/b.txt", "books/shelf/b.txt", "fr"), ("shelf/tome2/a.txt", "books/shelf/tome2/a.txt", "fr"),
        ("quijote", f"{book_server.url}/pg2000.txt", "es")]
    assert books[0]["sha256"] == hashlib.sha256(french.encode()).hexdigest()
    assert books[0]["characters"] == len(french.strip()) and books[0]["bytes"] == len(french.strip().encode())
    corpus = (workdir / "data/corpus_bilingual.txt").read_text()
    assert corpus.startswith(french.strip() + "\n\n" + french.upper().strip() + "\n\nEl ingenioso hidalgo")
    assert sorted(p.name for p in (workdir / "data/raw").iterdir()) == ["pg2000.txt"]  # local books stay put
    metrics = json.loads((workdir / "metrics/corpus.json").read_text())["corpus"]
    assert metrics["books"] == 3 and sorted(metrics["languages"]) == ["es", "fr"]
    assert "shelf" not in json.dumps(metrics)  # no figure per book: `dvc exp show` keeps its columns


def test_a_directory_without_books_is_refused(workdir):
    (workdir / "books/empty").mkdir()
    (workdir / "books/empty/readme.md").write_text("no .txt here")
    write_params(workdir, {"corpus.sources": [{"name": "empty", "url": "books/empty", "language": "fr"}],
                           "names.corpus": "fr", "names.tokenizer": "fr_1k"})
    done = run_module("src.pipeline.download", workdir)
    assert done.returncode == 2 and "corpus.sources[0]: books/empty holds no .txt file" in done.stderr, done.stderr


def test_a_sources_file_book_without_a_language_is_named_by_its_row(workdir):
    (workdir / "books/list.jsonl").write_text('{"name": "notes", "path": "books/notes_fr.txt", "format": "plain"}\n')
    write_params(workdir, {"corpus.sources": [{"name": "own", "url": "books/notes_fr.txt", "language": "fr",
                                               "format": "plain"}],
                           "corpus.sources_file": "books/list.jsonl", "names.corpus": "fr", "names.tokenizer": "fr_1k"})
    done = run_module("src.pipeline.download", workdir)
    assert done.returncode == 2, done.stderr
    assert ("books/notes_fr.txt: the text names no language: an ISO 639-1 language; set the language of "
            "books/list.jsonl row 1 (e.g. fr)") in done.stderr
