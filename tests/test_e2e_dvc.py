"""The real `dvc` CLI on a copy of the project in a temporary git repo, books from 127.0.0.1."""

import json

from tests.conftest import REPO_ROOT, stages_run

FRENCH = REPO_ROOT / "tests/fixtures/notes_fr.txt"


def test_dvc_repro_builds_the_data_stages_and_reruns_only_what_changed(project_repo, book_server):
    project_repo.environ["TT_CORPUS_MIRROR"] = book_server.url
    project_repo.set_params({"vocab_size": 1500})

    first = project_repo.dvc("repro", "download", "tokenize")
    assert "Running stage 'download'" in first.stdout and "Running stage 'tokenize'" in first.stdout
    repo = project_repo.path
    for out in ("data/raw/pg1342.txt", "data/raw/pg11.txt", "data/raw/pg2000.txt", "data/corpus_bilingual.txt",
                "data/corpus_index.json", "data/bilingual_1500.model", "data/bilingual_1500.vocab"):
        assert (repo / out).is_file(), out
    assert json.loads((repo / "metrics/tokenizer.json").read_text())["tokenizer"]["vocab_size"] == 1500
    shown = json.loads(project_repo.dvc("metrics", "show", "--json").stdout)
    assert "metrics/corpus.json" in json.dumps(shown) and "metrics/tokenizer.json" in json.dumps(shown)
    requests = len(book_server.requests)

    again = project_repo.dvc("repro", "download", "tokenize")
    assert "Stage 'download' didn't change, skipping" in again.stdout
    assert "Stage 'tokenize' didn't change, skipping" in again.stdout
    assert len(book_server.requests) == requests
    assert "up to date" in project_repo.dvc("status", "tokenize").stdout

    project_repo.set_params({"vocab_size": 1200})
    changed = project_repo.dvc("repro", "download", "tokenize")
    assert "Stage 'download' didn't change, skipping" in changed.stdout
    assert "Running stage 'tokenize'" in changed.stdout
    assert json.loads((repo / "metrics/tokenizer.json").read_text())["tokenizer"]["vocab_size"] == 1200
    assert len(book_server.requests) == requests  # the books were not fetched again
    assert "up to date" in project_repo.dvc("status", "tokenize").stdout


def test_a_shelf_from_a_sources_file_and_a_directory_through_dvc_repro_in_one_copy_on_disk(project_repo):
    """Local books in books/: a directory of them and a sources file naming more. An edit of the sources file
    re-runs the corpus; a bad row stops at check_params, before download loses anything; every output is one
    file on disk, linked to DVC's cache (.dvc/config's cache.type)."""
    repo = project_repo.path
    paragraphs = FRENCH.read_text().split("\n\n")
    (repo / "books/shelf").mkdir()
    for i in range(3):
        (repo / f"books/shelf/{i}.txt").write_text("\n\n".join(paragraphs[i:] + paragraphs[:i]))
    (repo / "books/extra.txt").write_text("\n\n".join(reversed(paragraphs)))
    sources_file = repo / "books/more.csv"
    sources_file.write_text("name,path,language,format\nextra,books/extra.txt,fr,plain\n")
    project_repo.set_params({"corpus.sources": [{"name": "shelf", "url": "books/shelf/", "language": "fr",
                                                 "format": "plain"}], "corpus.sources_file": "books/more.csv",
                             "vocab_size": 400, "names.corpus": "fr", "names.tokenizer": "fr_400"})
    project_repo.run("git", "add", "-A")
    project_repo.run("git", "commit", "-qm", "a shelf")

    first = project_repo.dvc("repro", "tokenize")
    assert stages_run(first.stdout) == ["check_params", "download", "tokenize"], first.stdout
    assert json.loads((repo / "metrics/corpus.json").read_text())["corpus"]["books"] == 4
    books = json.loads((repo / "data/corpus_sources.json").read_text())["books"]
    assert [b["name"] for b in books] == ["shelf/0.txt", "shelf/1.txt", "shelf/2.txt", "extra"]
    assert list((repo / "data/raw").iterdir()) == []  # local books are read where they are
    for output in ("data/corpus_fr.txt", "data/fr_400.model", "data/tokens/train.bin", "data/tokens/validation.bin"):
        assert (repo / output).stat().st_nlink == 2, output  # the workspace file is the cache's: one copy
    shown = project_repo.dvc("metrics", "show", "--json").stdout
    assert "shelf" not in shown and "extra" not in shown

    corpus = (repo / "data/corpus_fr.txt").read_bytes()
    sources_file.write_text(sources_file.read_text() + "more,books/shelf/0.txt,fr,plain\n")
    again = project_repo.dvc("repro", "tokenize")
    assert stages_run(again.stdout) == ["check_params", "download", "tokenize"], again.stdout
    assert json.loads((repo / "metrics/corpus.json").read_text())["corpus"]["books"] == 5

    corpus = (repo / "data/corpus_fr.txt").read_bytes()
    sources_file.write_text(sources_file.read_text() + "bad name,books/extra.txt,fr,plain\n")
    refused = project_repo.dvc("repro", "tokenize", check=False)
    assert refused.returncode != 0 and stages_run(refused.stdout) == ["check_params"], refused.stdout
    assert "books/more.csv line 4: 'name' = 'bad name' may only use" in refused.stderr
    assert (repo / "data/corpus_fr.txt").read_bytes() == corpus  # download never ran: nothing was lost
