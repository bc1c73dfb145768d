"""The real `dvc` CLI on a copy of the project in a temporary git repo, books from 127.0.0.1."""

import json


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
