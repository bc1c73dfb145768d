"""The pipeline under faults and bad input, through the real `dvc` CLI: nothing lost, nothing stuck, nothing silently
wrong.

Every test starts from a copy of one finished run (FAULT_PARAMS: the tiny model on one short book, through the train
stage), breaks something, and checks that `dvc repro` either recovers to exactly the finished run's results or stops
with the documented exit code, a message saying what to do, and every output that was there still there (or put back
by `python -m src.pipeline.restore`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import (REPO_ROOT, TINY_PARAMS, ProjectRepo, forget_finished_runs, project_params,
                            remove_checkpoints)

# The tiny model on Alice in Wonderland alone: a whole train stage in seconds.
FAULT_PARAMS = {**TINY_PARAMS, "corpus.sources": [s for s in project_params()["corpus"]["sources"]
                                                  if s["name"] == "alice_in_wonderland"]}
# What a finished run of `dvc repro train` leaves: its outputs, and its checkpoints (the stage's working state).
TRAIN_OUTPUTS = ("data/best_model.pt", "data/final_model.pt", "data/training_metrics.json", "metrics/train.json",
                 "metrics/train_history.json")
CHECKPOINTS = ("data/checkpoints/last.pt", "data/checkpoints/best.pt", "data/checkpoint_epoch_1.pt",
               "data/checkpoint_epoch_2.pt")
# Alice alone is an English corpus: data/corpus_en.txt, tokenized by data/en_1k.model (src/paths.py).
DATA_OUTPUTS = ("data/params_checked", "data/raw/pg11.txt", "data/corpus_en.txt", "data/corpus_index.json",
                "data/corpus_sources.json", "metrics/corpus.json", "data/languages.json", "data/en_1k.model",
                "data/en_1k.vocab", "data/tokens/train.bin", "data/tokens/meta.json", "metrics/tokenizer.json")
TIMING_KEYS = {"total_training_time", "tokens_per_sec", "seconds"}
KILL_ENV = {"PYTHONPATH": str(REPO_ROOT / "tests" / "fault_injection")}  # tests/fault_injection/sitecustomize.py


@pytest.fixture(scope="session")
def finished_repo(tmp_path_factory, shared_corpus) -> ProjectRepo:
    """A committed project repo where `dvc repro train` ran once with FAULT_PARAMS: the uninterrupted reference."""
    repo = ProjectRepo.create(tmp_path_factory.mktemp("finished") / "project")
    repo.environ["TT_CORPUS_MIRROR"] = str(shared_corpus)
    repo.set_params(FAULT_PARAMS)
    repo.dvc("repro", "train")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "a finished run")
    return repo


@pytest.fixture
def repo(finished_repo, tmp_path) -> ProjectRepo:
    return finished_repo.copy(tmp_path / "project")


def computed(path: Path):
    """A metrics file without its timing figures."""
    value = json.loads(path.read_text())
    if isinstance(value, list):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in value]
    value = {k: v for k, v in value.items() if k not in TIMING_KEYS}
    if "history" in value:  # training_metrics.json
        value = {"epoch_history": computed_rows(value["history"]),
                 "final_metrics": {k: v for k, v in value["final_metrics"].items() if k not in TIMING_KEYS}}
    return value


def computed_rows(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_training(repo: ProjectRepo, reference: ProjectRepo) -> None:
    """The train stage's outputs hold what the uninterrupted run's do, and agree with each other."""
    for name in ("metrics/train.json", "metrics/train_history.json", "data/training_metrics.json"):
        assert computed(repo.path / name) == computed(reference.path / name), name
    for name in ("data/best_model.pt", "data/final_model.pt", "data/checkpoints/last.pt", "data/checkpoints/best.pt"):
        mine, theirs = weights(repo.path / name), weights(reference.path / name)
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs), name
    summary = json.loads((repo.path / "metrics/train.json").read_text())["train"]
    final = torch.load(repo.path / "data/final_model.pt", weights_only=True)
    best = torch.load(repo.path / "data/best_model.pt", weights_only=True)
    assert final["epoch"] == summary["epochs"] and best["epoch"] == summary["best_epoch"]


def up_to_date(repo: ProjectRepo, *targets: str) -> bool:
    return repo.up_to_date(*targets)


def file_bytes(repo: ProjectRepo, names) -> dict[str, bytes]:
    return {name: (repo.path / name).read_bytes() for name in names}


# --- bad values stop before DVC removes anything ------------------------------------------------------------------

def test_a_bad_param_stops_dvc_repro_before_any_stage_loses_its_outputs(repo):
    before = file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS)
    repo.set_params({"epochs": 0})
    done = repo.dvc("repro", "train", check=False)
    assert done.returncode != 0
    assert "'epochs' = 0 is out of range: must be an integer in [1, 10000]" in done.stderr
    assert "failed to reproduce 'check_params'" in done.stdout + done.stderr
    assert file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS) == before
    repo.set_params({"epochs": FAULT_PARAMS["epochs"]})
    repo.dvc("repro", "train")
    assert up_to_date(repo, "train") and file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS) == before


def test_a_learning_rate_below_1e_4_can_be_set_as_dvc_writes_it(repo):
    done = repo.dvc("exp", "run", "-S", "learning_rate=0.00005", "train")
    assert "learning_rate: 5e-05" in (repo.path / "params.yaml").read_text(), done.stdout
    assert json.loads((repo.path / "metrics/train.json").read_text())["train"]["epochs"] == FAULT_PARAMS["epochs"]


def test_a_key_added_by_exp_run_is_named_with_how_to_remove_it(repo):
    before = file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS)
    done = repo.dvc("exp", "run", "-S", "+foo=1", "train", check=False)
    assert done.returncode != 0
    assert "unknown key 'foo': delete it from params.yaml (`dvc exp run -S '~foo'` does" in done.stderr
    assert file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS) == before
    repo.dvc("exp", "run", "-S", "~foo", "train")
    assert "foo" not in (repo.path / "params.yaml").read_text() and up_to_date(repo, "train")


def test_a_failed_stage_says_how_to_restore_what_dvc_removed_and_restore_does(repo):
    before = file_bytes(repo, DATA_OUTPUTS[1:6])
    params = repo.path / "params.yaml"
    params.write_text(params.read_text().replace(FAULT_PARAMS["corpus.sources"][0]["sha256"], "f" * 64))
    done = repo.dvc("repro", "download", check=False)
    assert done.returncode != 0 and "pg11.txt: sha256 mismatch" in done.stderr
    assert "`python -m src.pipeline.restore download` puts back the ones dvc.lock records" in done.stderr
    assert not (repo.path / "data/corpus_en.txt").exists()  # DVC removed it before running the stage
    restored = repo.run("python", "-m", "src.pipeline.restore", "download")
    # data/raw persists (dvc.yaml): DVC never removed it, and the book the mismatch refused is still there.
    assert ("put back data/corpus_en.txt, data/corpus_index.json, data/corpus_sources.json, data/languages.json, "
            "metrics/corpus.json") in restored.stdout
    assert (repo.path / "data/raw/pg11.txt").read_bytes() == before["data/raw/pg11.txt"]
    assert file_bytes(repo, DATA_OUTPUTS[1:6]) == before


def test_a_part_file_left_by_a_crash_is_never_versioned(repo):
    (repo.path / "data/checkpoints/.last.pt.4242.part").write_bytes(b"half of a checkpoint")
    (repo.path / "data/raw/.pg11.txt.4242.part").write_bytes(b"half of a book")
    assert up_to_date(repo, "train")
    assert repo.run("git", "status", "--porcelain").stdout == ""


# --- kill the train stage at every write; damage every file it leaves ---------------------------------------------

# A 2-epoch run renames 17 files into place: train_history.json, eval_history.json, best, checkpoint_epoch_1, last
# (epoch 1); the same for epoch 2; then best_model.pt, final_model.pt, training_metrics.json, train.json,
# train_speed.json, train_history.json, eval_history.json. (precision auto's verdict is cached by the first run of
# the session.)
RENAMES = 17


def killed_by_sigkill(dvc_stderr: str) -> bool:
    """DVC reports -9 where the stage's shell exec'd the command (bash) and 137 where the shell survived it (dash)."""
    return "exited with -9" in dvc_stderr or "exited with 137" in dvc_stderr


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("rename", range(1, RENAMES + 1))
def test_a_kill_at_any_write_of_training_is_finished_or_redone_by_the_next_repro(finished_repo, repo, rename, when):
    remove_checkpoints(repo.path)  # a run of these params that never finished: afresh (--force), resumed after
    forget_finished_runs(repo.path)
    killed = repo.dvc("repro", "--force", "--single-item", "train", check=False,
                      env={**KILL_ENV, "TT_KILL_AT_RENAME": f"train:{rename}:{when}"})
    assert killed.returncode != 0 and killed_by_sigkill(killed.stderr), killed.stdout + killed.stderr
    assert not up_to_date(repo, "train")

    repo.dvc("repro", "train")
    assert up_to_date(repo, "train")
    assert_same_training(repo, finished_repo)
    assert not list((repo.path / "data/checkpoints").glob(".*.part"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "truncate"])
@pytest.mark.parametrize("name", TRAIN_OUTPUTS + DATA_OUTPUTS)
def test_a_lost_or_damaged_file_is_rebuilt_by_the_next_repro_without_training_again(finished_repo, repo, name,
                                                                                   damage):
    path = repo.path / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: max(path.stat().st_size // 2, 1)])
    done = repo.dvc("repro", "train")
    assert "train loss" not in done.stderr, done.stderr  # no epoch was trained again
    assert up_to_date(repo, "train")
    assert_same_training(repo, finished_repo)
    assert file_bytes(repo, DATA_OUTPUTS) == file_bytes(finished_repo, DATA_OUTPUTS)


# --- ./scripts/train_pipeline.sh checks everything it can before DVC starts ------------------------------------------

def pipeline(repo: ProjectRepo, *args: str):
    return repo.run("./scripts/train_pipeline.sh", *args, check=False)


@pytest.mark.parametrize("args, message", [
    (["--output-dir", "/proc/version/out"], "--output-dir /proc/version/out is not a directory this user can write"),
    (["--output-dir", "dist/tinytransformer"], "is the project's own dist/tinytransformer/"),
    (["--output-dir", "data"], "is the project's own data/"),
    (["--output-dir", "metrics/copy"], "lies in the project's own metrics/"),
    (["--output-dir", "."], "is the project's root or holds it"),
    (["--skip-tokenizer", "--vocab-size", "500"], "--vocab-size changes the tokenizer, which --skip-tokenizer keeps"),
    (["--skip-corpus", "--mirror", "/srv/books"], "--corpus-url and --mirror have no effect with --skip-corpus"),
    (["--mirror", "ftp://127.0.0.1/books"], "only http://, https:// or a local directory are accepted"),
    (["--mirror", "/no/such/books"], "'/no/such/books': not a directory"),
    (["--epochs", "0"], "'epochs' = 0 is out of range"),
    (["--learning-rate", "2"], "'learning_rate' = 2 is out of range"),
])
def test_train_pipeline_sh_refuses_bad_options_before_dvc_runs(repo, args, message):
    params = (repo.path / "params.yaml").read_text()
    done = pipeline(repo, *args)
    assert done.returncode == 1 and message in done.stderr, (args, done.stdout, done.stderr)
    assert "==> dvc" not in done.stdout and "Running stage" not in done.stdout
    assert (repo.path / "params.yaml").read_text() == params  # no experiment was started
    assert up_to_date(repo, "train")


@pytest.mark.slow
def test_train_pipeline_sh_puts_back_what_a_failed_stage_lost(repo):
    """A context the data cannot fill once: the train stage exits 1 before training, and the models come back."""
    before = file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS)
    done = pipeline(repo, "--skip-tokenizer", "--resume", "--max-seq-length", "8192")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot fill one batch of batch_size=64 windows of max_seq_length=8192" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "restore: put back data/best_model.pt, data/final_model.pt" in done.stdout + done.stderr
    assert file_bytes(repo, TRAIN_OUTPUTS + CHECKPOINTS) == before

