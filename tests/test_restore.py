"""`python -m src.pipeline.restore STAGE`: what dvc.lock records put back, checked by md5, through the real DVC."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from tests.conftest import ProjectRepo


def md5(repo: ProjectRepo, path: str) -> str:
    return hashlib.md5((repo.path / path).read_bytes()).hexdigest()


def recorded_md5(repo: ProjectRepo, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


# The tiny model's samples pass or fail the quality checks by a hair: only the budgets decide here.
ANY_QUALITY = {"validate.max_repetition": 1, "validate.max_unknown_share": 1, "validate.max_whitespace_share": 1,
               "validate.min_language_share": 0}


@pytest.mark.slow
def test_restore_puts_back_the_last_good_metrics_of_an_uncommitted_run_not_git_heads(tiny_repo):
    """The issue's repro: a committed run, a good uncommitted one (what `dvc exp run` leaves too), a failing one."""
    tiny_repo.set_params(ANY_QUALITY)
    tiny_repo.dvc("repro")
    tiny_repo.run("git", "add", "-A")
    tiny_repo.run("git", "commit", "-qm", "a committed run")
    tiny_repo.set_params({"validate.samples_per_language": 2})
    tiny_repo.dvc("repro")
    good = (tiny_repo.path / "metrics/validate.json").read_bytes()
    assert md5(tiny_repo, "metrics/validate.json") == recorded_md5(tiny_repo, "validate", "metrics/validate.json")
    assert tiny_repo.run("git", "show", "HEAD:metrics/validate.json").stdout.encode() != good

    tiny_repo.set_params({"validate.budgets.latency_p95_ms": 0.001})
    failed = tiny_repo.dvc("repro", check=False)
    assert "exited with 5" in failed.stdout + failed.stderr
    verdict = (tiny_repo.path / "metrics/validate.json").read_bytes()
    assert json.loads(verdict)["validate"]["budgets"]["latency_p95_ms"]["passed"] is False
    tiny_repo.set_params({"validate.budgets.latency_p95_ms": 250})

    done = tiny_repo.run("python", "-m", "src.pipeline.restore", "validate")
    assert "put back metrics/validate.json as dvc.lock records them (md5 checked)" in done.stdout, done.stderr
    assert (tiny_repo.path / "metrics/validate.json").read_bytes() == good
    assert (tiny_repo.path / "failed/metrics/validate.json").read_bytes() == verdict  # kept, not deleted
    assert "kept as failed/metrics/validate.json" in done.stdout
    assert "metrics/validate.json" not in tiny_repo.dvc("status", "validate").stdout  # its deps changed, not it

    # What reads the metrics from git revisions is as it was: they are still git's, `cache: false` in dvc.yaml.
    shown = json.loads(tiny_repo.dvc("metrics", "show", "--json").stdout)[""]["data"]["metrics/validate.json"]["data"]
    assert shown["validate"]["tokens_per_sec"] == json.loads(good)["validate"]["tokens_per_sec"]
    diff = json.loads(tiny_repo.dvc("metrics", "diff", "HEAD", "--json").stdout)
    assert "validate.tokens_per_sec" in diff["metrics/validate.json"]
    tiny_repo.run("git", "commit", "-qam", "the good run")
    plots = json.loads(tiny_repo.dvc("plots", "diff", "HEAD~1", "HEAD", "--json").stdout)
    assert plots["data"]["loss_by_step"][0]["revisions"] == ["HEAD~1", "HEAD"]
    assert json.loads(tiny_repo.dvc("exp", "show", "--json").stdout)


@pytest.mark.slow
def test_restore_says_it_cannot_when_the_recorded_copy_is_nowhere(tiny_repo):
    """No stage kept it (a run outside DVC's cache, then `dvc gc`-like loss): named, exit 1, never 'put back'."""
    tiny_repo.dvc("repro", "tokenize")
    kept = tiny_repo.path / ".dvc/cache/files/md5"
    recorded = recorded_md5(tiny_repo, "download", "metrics/corpus.json")
    (kept / recorded[:2] / recorded[2:]).unlink()  # the copy the download stage kept, and git has none
    (tiny_repo.path / "metrics/corpus.json").write_text('{"corpus": "a failed run\'s"}\n')

    done = tiny_repo.run("python", "-m", "src.pipeline.restore", "download", check=False)
    assert done.returncode == 1 and "put back" not in done.stdout
    assert "metrics/corpus.json: the copy dvc.lock records is neither in DVC's cache nor in git HEAD" in done.stderr
    assert (tiny_repo.path / "metrics/corpus.json").read_text() == '{"corpus": "a failed run\'s"}\n'


@pytest.mark.slow
def test_restore_puts_back_every_output_of_the_train_stage_as_dvc_lock_records_it(tiny_repo):
    """The train stage's metrics and plots (eval_history.json among them) are cache: false, its models cached: a
    failed run's leftovers are replaced by the recorded copies, never by git's (nothing is committed here)."""
    tiny_repo.dvc("repro", "train")
    lock = yaml.safe_load((tiny_repo.path / "dvc.lock").read_text())["stages"]["train"]["outs"]
    recorded = {out["path"]: out["md5"] for out in lock}
    assert "metrics/eval_history.json" in recorded and "metrics/train_history.json" in recorded
    (tiny_repo.path / "data/best_model.pt").unlink()  # DVC removed it before the failed run
    for path in recorded:
        if path.startswith("metrics/"):
            (tiny_repo.path / path).write_text("[]\n")  # what the failed run wrote

    done = tiny_repo.run("python", "-m", "src.pipeline.restore", "train")
    assert "as dvc.lock records them (md5 checked)" in done.stdout, done.stderr
    assert {path: md5(tiny_repo, path) for path in recorded} == recorded
    assert (tiny_repo.path / "failed/metrics/eval_history.json").read_text() == "[]\n"
