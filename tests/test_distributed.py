"""Training under torchrun (DDP over gloo on the CPU) keeps the single process's results."""

import json

import pytest

from src import paths
from tests.conftest import keep_only_epoch_1, poison_epoch_1, run_module, write_params

# Two workers compute each half batch's gradients with other matrix shapes and add them in another order, so
# the runs agree to float rounding, which training then amplifies. Measured on the tiny config: 2 workers vs
# 1 process differ by 0.16-0.38 % in loss; 1 process on 1 thread vs 2 threads already by 0.05-0.12 %.
TOLERANCE = 0.01


def history(workdir):
    return json.loads((workdir / paths.TRAIN_PLOT).read_text())


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
