"""DVC experiments and metrics on the tiny pipeline: exp run -S, exp show/apply/branch, metrics diff, queue."""

import json
import time

import pytest


def experiments(repo) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {"params", "metrics", "state"}} (workspace and HEAD left out).

    ``state`` is the executor's ("queued", "running", "success", "failed"), None for an experiment run in
    the workspace.
    """
    found = {}
    for row in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in row.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                found[revision.get("name") or exp.get("name")] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
                    "state": state,
                }
    return found


@pytest.mark.slow
def test_exp_run_set_param_show_diff_apply_and_branch(tiny_repo):
    tiny_repo.dvc("repro")
    tiny_repo.run("git", "add", "-A")
    tiny_repo.run("git", "commit", "-qm", "baseline run")
    repo = tiny_repo.path
    baseline = json.loads((repo / "metrics/train.json").read_text())["train"]

    run = tiny_repo.dvc("exp", "run", "-S", "epochs=3", "-n", "three-epochs")
    assert "Stage 'download' didn't change" in run.stdout and "Stage 'tokenize' didn't change" in run.stdout
    assert "Running stage 'train'" in run.stdout and "Running stage 'validate'" in run.stdout
    shown = experiments(tiny_repo)["three-epochs"]
    assert shown["params"]["epochs"] == 3
    assert shown["metrics"]["metrics/train.json"]["train"]["epochs"] == 3
    assert "latency_p95_ms" in shown["metrics"]["metrics/validate.json"]["validate"]["budgets"]

    diff = tiny_repo.dvc("metrics", "diff", "HEAD", "three-epochs", "--json").stdout
    changes = json.loads(diff)
    train_change = changes["metrics/train.json"]
    assert train_change["train.epochs"] == {"old": baseline["epochs"], "new": 3, "diff": 3 - baseline["epochs"]}
    assert "train.best_validation_loss" in train_change
    table = tiny_repo.dvc("metrics", "diff", "HEAD", "three-epochs", "--md").stdout
    assert table.startswith("| Path") and "best_validation_loss" in table
    assert "budgets.rss_mb.value" in tiny_repo.dvc("metrics", "show", "--md").stdout

    tiny_repo.run("git", "checkout", "--", "params.yaml")
    tiny_repo.dvc("checkout")
    tiny_repo.dvc("exp", "apply", "three-epochs")
    assert "epochs: 3" in (repo / "params.yaml").read_text()
    assert json.loads((repo / "metrics/train.json").read_text())["train"]["epochs"] == 3
    tiny_repo.dvc("exp", "branch", "three-epochs", "three-epochs-branch")
    assert "three-epochs-branch" in tiny_repo.run("git", "branch", "--list").stdout


@pytest.mark.slow
def test_a_queued_experiment_runs_with_queue_start(tiny_repo):
    tiny_repo.dvc("repro")
    tiny_repo.run("git", "add", "-A")
    tiny_repo.run("git", "commit", "-qm", "baseline run")
    tiny_repo.dvc("exp", "run", "--queue", "-S", "learning_rate=0.001", "-n", "low-lr")
    assert experiments(tiny_repo)["low-lr"]["state"] == "queued"

    tiny_repo.dvc("queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if experiments(tiny_repo).get("low-lr", {}).get("state") not in ("queued", "running"):
            break
        time.sleep(2)
    tiny_repo.dvc("queue", "stop", "--kill", check=False)
    done = experiments(tiny_repo)["low-lr"]
    assert done["state"] not in ("failed", "queued", "running"), tiny_repo.dvc("queue", "logs", "low-lr", check=False).stdout
    assert done["params"]["learning_rate"] == 0.001
    assert done["metrics"]["metrics/train.json"]["train"]["best_validation_loss"] > 0
