"""The whole pipeline through the real `dvc` CLI and ./scripts/train_pipeline.sh, on TINY_PARAMS."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import forget_finished_runs, interrupt_training, poison_epoch_1, remove_checkpoints, stages_run

# Figures that depend on the machine's speed, not on what was computed.
TIMING_KEYS = {"total_training_time", "tokens_per_sec", "seconds"}


def computed(path):
    """A metrics file without its timing figures."""
    value = json.loads(path.read_text())
    if isinstance(value, list):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in value]
    return {k: v for k, v in value.items() if k not in TIMING_KEYS}


def test_dvc_repro_runs_every_stage_and_an_epochs_change_reruns_only_train_bundle_and_validate(tiny_repo):
    first = tiny_repo.dvc("repro")
    assert stages_run(first.stdout) == ["check_params", "download", "tokenize", "train", "bundle", "validate"], \
        first.stdout
    repo = tiny_repo.path
    for out in ("data/best_model.pt", "data/final_model.pt", "data/training_metrics.json",
                "data/checkpoints/last.pt", "metrics/train.json", "metrics/validate.json", "metrics/samples.json",
                "dist/tinytransformer/model.safetensors", "dist/tinytransformer/manifest.json"):
        assert (repo / out).is_file(), out
    shown = json.loads(tiny_repo.dvc("metrics", "show", "--json").stdout)
    text = json.dumps(shown)
    for metrics_file in ("corpus.json", "tokenizer.json", "train.json", "validate.json"):
        assert f"metrics/{metrics_file}" in text
    assert "best_validation_loss" in text and "latency_p95_ms" in text

    again = tiny_repo.dvc("repro")
    assert stages_run(again.stdout) == []
    assert tiny_repo.dvc("status").stdout.strip() == "Data and pipelines are up to date."

    tiny_repo.set_params({"epochs": 3})
    changed = tiny_repo.dvc("repro")
    assert "Stage 'download' didn't change" in changed.stdout and "Stage 'tokenize' didn't change" in changed.stdout
    assert "Running stage 'train'" in changed.stdout and "Running stage 'validate'" in changed.stdout
    assert "Running stage 'bundle'" in changed.stdout
    assert json.loads((repo / "metrics/train.json").read_text())["train"]["epochs"] == 3
    assert tiny_repo.up_to_date()


@pytest.mark.slow
def test_training_killed_with_sigkill_mid_epoch_resumes_to_the_same_result(tiny_repo):
    # The speed choices set, not measured: this test is about the kill and the resume through DVC (a measured run
    # against a cached verdict is test_reproducibility's and test_trainer's).
    tiny_repo.set_params({"epochs": 3, "train.precision": "bf16", "train.attention": "math"})
    tiny_repo.dvc("repro")
    repo = tiny_repo.path
    uninterrupted = computed(repo / "metrics/train.json"), computed(repo / "metrics/train_history.json")

    remove_checkpoints(repo)
    forget_finished_runs(repo)  # as for params that never finished: resumed, not checked out of the run cache
    dvc = subprocess.Popen(["python", "-m", "dvc", "repro", "--force", "train"], cwd=repo, env=tiny_repo.environ,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first_epoch = repo / "data/checkpoint_epoch_1.pt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and dvc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first_epoch.exists(), "training never finished its first epoch"
    time.sleep(1.0)  # well into epoch 2
    os.killpg(dvc.pid, signal.SIGKILL)
    dvc.wait()
    last = torch.load(repo / "data/checkpoints/last.pt", weights_only=True)
    assert last["epoch"] == 1, "the kill came after epoch 2 ended: make the epochs longer"

    resumed = tiny_repo.dvc("repro")
    assert "Running stage 'train'" in resumed.stdout
    assert "resuming after epoch 1 of 3" in resumed.stderr + resumed.stdout
    assert (computed(repo / "metrics/train.json"), computed(repo / "metrics/train_history.json")) == uninterrupted
    assert tiny_repo.up_to_date()


def pipeline(repo, *args):
    return repo.run("./scripts/train_pipeline.sh", *args, check=False)


@pytest.mark.slow
def test_train_pipeline_sh_exit_codes_come_from_real_failures(tiny_repo, book_server):
    repo = tiny_repo.path
    assert pipeline(tiny_repo, "--help").returncode == 0

    for args, message in ((["--frobnicate"], "unknown option '--frobnicate'"),
                          (["--epochs", "many"], "--epochs expects a whole number"),
                          (["--skip-tokenizer"], "data/corpus_bilingual.txt is missing")):
        done = pipeline(tiny_repo, *args)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)

    book_server.mode = "404"
    done = pipeline(tiny_repo, "--mirror", book_server.url)
    assert done.returncode == 2 and "HTTP 404" in done.stdout + done.stderr and "[2/4]" in done.stdout

    done = pipeline(tiny_repo, "--epochs", "2")  # a DVC experiment (dvc exp run -S epochs=2)
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "Epoch 2/2: train_loss=", "Training complete", "Train loss:",
                  "Validation loss:", "Training time:", "data/best_model.pt", "Validation PASSED", "Memory (RSS):",
                  "Latency (p95):"):
        assert phase in done.stdout, phase

    tiny_repo.set_params({"validate.budgets.rss_mb": 5})
    done = pipeline(tiny_repo, "--skip-tokenizer")
    assert done.returncode == 5 and "rss_mb" in done.stdout + done.stderr
    # restore put back the last good verdict (dvc.lock's) and kept the failed run's where it says.
    assert "kept as failed/metrics/validate.json" in done.stdout
    failed = json.loads((repo / "failed/metrics/validate.json").read_text())["validate"]
    assert failed["budgets"]["rss_mb"]["passed"] is False
    assert json.loads((repo / "metrics/validate.json").read_text())["validate"]["passed"] is True
    tiny_repo.set_params({"validate.budgets.rss_mb": 64})

    # A run killed during epoch 2, whose epoch-1 checkpoint has weights gone bad, resumed: the loss is NaN at once.
    poisoned = poison_epoch_1(repo)
    interrupt_training(repo)
    done = pipeline(tiny_repo, "--skip-tokenizer", "--resume")
    assert done.returncode == 4 and "lower learning_rate" in done.stdout + done.stderr
    assert poisoned.is_file()

    index = repo / "data/corpus_index.json"
    index.write_text(index.read_text()[:40])
    done = pipeline(tiny_repo, "--skip-corpus")
    assert done.returncode == 3 and "dvc repro --force download" in done.stdout + done.stderr
