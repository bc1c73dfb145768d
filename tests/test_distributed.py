"""Training under torchrun (DDP over gloo on the CPU) keeps the single process's results."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from src import paths
from tests.conftest import REPO_ROOT, keep_only_epoch_1, poison_epoch_1, run_module, write_params

# Two workers compute each half batch's gradients with other matrix shapes and add them in another order, so
# the runs agree to float rounding, which training then amplifies. Measured on the tiny config: 2 workers vs
# 1 process differ by 0.16-0.38 % in loss; 1 process on 1 thread vs 2 threads already by 0.05-0.12 %.
TOLERANCE = 0.01


def history(workdir):
    """Every evaluation's row."""
    return json.loads((workdir / paths.TRAINING_METRICS).read_text())["history"]


def weights_sha256(workdir) -> dict[str, str]:
    """sha256 of the final and best models' weights."""
    return {name: hashlib.sha256(b"".join(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                                          for t in torch.load(workdir / name, weights_only=True)["model"].values())
                                 ).hexdigest() for name in (paths.FINAL_MODEL, paths.BEST_MODEL)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The tiny recipe, 60 steps of it, evaluated every 20.
BUDGET = {"train.max_steps": 60, "train.eval_every_steps": 20}


def machine(tiny_pipeline, folder, overrides: dict):
    """A folder holding the tiny pipeline's tokens and tokenizer (what `dvc pull` brings) and its params."""
    (folder / "data").mkdir(parents=True)
    shutil.copytree(tiny_pipeline / paths.TOKENS_DIR, folder / paths.TOKENS_DIR)
    for tokenizer in (tiny_pipeline / "data").glob("bilingual_*"):
        shutil.copy(tokenizer, folder / "data")
    shutil.copy(tiny_pipeline / "params.yaml", folder / "params.yaml")
    write_params(folder, {**BUDGET, **overrides})
    return folder


def two_machines(tiny_pipeline, root):
    """Train BUDGET on two "machines" on 127.0.0.1, one worker each, met at machine 0's port. Machine 0's folder."""
    port = free_port()
    nodes = []
    for rank in range(2):
        node = machine(tiny_pipeline, root / f"machine{rank}", {"train.nnodes": 2})
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TT_MASTER": f"127.0.0.1:{port}",
                       "TT_NODE_RANK": str(rank)}
        nodes.append(subprocess.Popen([sys.executable, "-m", "src.pipeline.train"], cwd=node, env=environment,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr
    assert "--nnodes=2 --node_rank=0" in outputs[0][1] and "weights identical across 2 workers" in outputs[0][1]
    assert not (root / "machine1" / paths.BEST_MODEL).exists()  # machine 0 alone writes the outputs
    return root / "machine0"


@pytest.mark.slow
def test_two_machines_train_like_one_process_and_repeat_bit_for_bit(tiny_pipeline, tmp_path):
    alone = machine(tiny_pipeline, tmp_path / "alone", {})
    assert run_module("src.pipeline.train", alone).returncode == 0
    first, second = two_machines(tiny_pipeline, tmp_path / "first"), two_machines(tiny_pipeline, tmp_path / "second")
    assert weights_sha256(first) == weights_sha256(second)
    computed = [[{k: v for k, v in row.items() if k not in ("seconds", "tokens_per_sec")} for row in history(run)]
                for run in (first, second)]
    assert computed[0] == computed[1] and [row["step"] for row in computed[0]] == [20, 40, 60]
    for one, two in zip(history(alone), history(first)):
        assert two["validation_loss"] == pytest.approx(one["validation_loss"], rel=TOLERANCE)


def test_a_machine_of_several_is_told_what_to_set(tiny_copy):
    write_params(tiny_copy, {"train.nnodes": 2})
    done = run_module("src.pipeline.train", tiny_copy, env={"TT_MASTER": "", "TT_NODE_RANK": ""})
    assert done.returncode == 1 and "set TT_MASTER=host:port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_workers_give_the_single_process_loss_curve(tiny_pipeline, tiny_copy):
    write_params(tiny_copy, {"train.nproc": 2})
    done = run_module("src.pipeline.train", tiny_copy, env={"TT_TRAIN_FRESH": "1"})
    assert done.returncode == 0, done.stderr
    assert "launching 2 workers through torchrun" in done.stderr
    assert "weights identical across 2 workers" in done.stderr
    single, double = history(tiny_pipeline), history(tiny_copy)
    assert [row["epoch"] for row in double] == [row["epoch"] for row in single]
    for one, two in zip(single, double):
        print(f"epoch {one['epoch']}: validation loss 1 process {one['validation_loss']:.4f}, "
              f"2 workers {two['validation_loss']:.4f}")  # shown by `pytest -s`
        assert two["learning_rate"] == one["learning_rate"]  # same global batch, same number of steps
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=TOLERANCE)
        assert two["validation_loss"] == pytest.approx(one["validation_loss"], rel=TOLERANCE)
    assert {p.name for p in (tiny_copy / paths.CHECKPOINT_DIR).glob("*.pt")} == {"best.pt", "last.pt"}
    assert {p.name for p in (tiny_copy / paths.PERIODIC_DIR).glob("checkpoint_epoch_*.pt")} == {
        "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"}


@pytest.mark.slow
def test_compiled_workers_train_like_the_single_process(tiny_pipeline, tiny_copy):
    write_params(tiny_copy, {"train.nproc": 2, "train.compile": True})
    done = run_module("src.pipeline.train", tiny_copy, env={"TT_TRAIN_FRESH": "1"})
    assert done.returncode == 0, done.stderr
    assert "weights identical across 2 workers" in done.stderr
    for one, two in zip(history(tiny_pipeline), history(tiny_copy)):
        assert two["validation_loss"] == pytest.approx(one["validation_loss"], rel=TOLERANCE)


@pytest.mark.slow
def test_two_workers_resume_a_single_process_run(tiny_pipeline, tiny_copy):
    keep_only_epoch_1(tiny_copy)
    write_params(tiny_copy, {"train.nproc": 2})
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch 1 of 2" in done.stderr
    assert history(tiny_copy)[0] == history(tiny_pipeline)[0]  # epoch 1 is the single process's own
    assert history(tiny_copy)[1]["validation_loss"] == pytest.approx(history(tiny_pipeline)[1]["validation_loss"],
                                                                      rel=TOLERANCE)


@pytest.mark.slow
def test_a_failing_worker_gives_the_stage_exit_code(tiny_copy):
    poison_epoch_1(tiny_copy)
    write_params(tiny_copy, {"train.nproc": 2})
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 4 and "loss became nan at epoch 2, step 1" in done.stderr


def test_an_uneven_batch_split_is_refused(tiny_copy):
    write_params(tiny_copy, {"train.nproc": 3})
    done = run_module("src.pipeline.train", tiny_copy)
    assert done.returncode == 1 and "'batch_size' = 64 must split evenly over 'train.nproc' = 3" in done.stderr
