"""The training recipes tried as DVC experiments, side by side: steps and seconds to a loss, best loss in a budget.

    python -m bench.recipes [--target 4.84] [--budget-s 300] [--json | --page docs/TIME_TO_QUALITY.md]

Reads `dvc exp show --all-commits --json` and, for each experiment, its committed metrics/eval_history.json (a row per
evaluation: step, training seconds, validation loss; metrics/train_history.json in earlier versions) and
metrics/train.json. "To target" is the first
evaluation at or below ``--target``, so its precision is the run's train.eval_every_steps; seconds are
training seconds (compilation included, evaluation excluded). ``--page`` writes the Markdown page, dated,
with the machine and this command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from src.training.distributed import processor_name

RECIPE_KEYS = ("train.optimizer", "train.schedule", "learning_rate", "train.warmup_steps", "train.eval_every_steps",
               "epochs")


def experiments(exp_show: list[dict]) -> Iterator[tuple[str, str, dict]]:
    """(name, commit, params) of each experiment in `dvc exp show --json`'s output."""
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs", []):
                params = ((rev.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {})
                if rev.get("name"):
                    yield rev["name"], rev["rev"], params


def lookup(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def committed_json(rev: str, path: str) -> Any:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def summary(name: str, rev: str, params: dict, target: float, budget_s: float) -> dict[str, Any] | None:
    # Each evaluation's row: metrics/eval_history.json, or, in versions before it, metrics/train_history.json.
    history = committed_json(rev, "metrics/eval_history.json") or committed_json(rev, "metrics/train_history.json")
    train = committed_json(rev, "metrics/train.json")
    if not history or not train or "seconds" not in history[0]:
        return None  # an experiment of a version without per-step history
    train = train.get("train", train)  # versions before the metrics were grouped by stage wrote them ungrouped
    reached = next((row for row in history if row["validation_loss"] <= target), None)
    in_budget = [row["validation_loss"] for row in history if row["seconds"] <= budget_s]
    return {"experiment": name, "commit": rev[:8], **{key: lookup(params, key) for key in RECIPE_KEYS},
            "steps_to_target": reached["step"] if reached else None,
            "seconds_to_target": round(reached["seconds"], 1) if reached else None,
            "best_loss_in_budget": round(min(in_budget), 4) if in_budget else None,
            "best_validation_loss": train["best_validation_loss"],
            "training_seconds": round(history[-1]["seconds"], 1), "precision": train["environment"]["precision"]}


def markdown(rows: list[dict], target: float, budget_s: float) -> str:
    header = (f"| experiment | optimizer | schedule | learning rate | warmup | eval every | steps to {target} | "
              f"seconds to {target} | best loss in {budget_s:g} s | best loss | training s | precision |")
    lines = [header, "|" + " --- |" * 12]
    for r in rows:
        cells = [r["experiment"], r["train.optimizer"], r["train.schedule"], r["learning_rate"], r["train.warmup_steps"],
                 r["train.eval_every_steps"], r["steps_to_target"] or "not reached", r["seconds_to_target"] or "-",
                 r["best_loss_in_budget"], r["best_validation_loss"], r["training_seconds"], r["precision"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=4.84)
    parser.add_argument("--budget-s", type=float, default=300, help="training seconds for 'best loss in budget'")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--page", type=Path, help="write the Markdown page here")
    args = parser.parse_args(argv)

    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--all-commits", "--json"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"dvc exp show failed: {shown.stderr.strip()}")
    rows = [row for name, rev, params in experiments(json.loads(shown.stdout))
            if (row := summary(name, rev, params, args.target, args.budget_s))]
    rows.sort(key=lambda r: r["experiment"])
    if args.json:
        print(json.dumps({"benchmark": "recipes", "target": args.target, "budget_s": args.budget_s, "rows": rows}))
        return
    table = markdown(rows, args.target, args.budget_s)
    if not args.page:
        print(table)
        return
    command = "python -m bench.recipes " + " ".join(argv if argv is not None else sys.argv[1:])
    args.page.write_text(f"""# Time to quality: training recipes

Generated by `{command}` on {datetime.date.today().isoformat()}, on {processor_name()} (the train stage's
threads; `metrics/train.json` records each run's environment). Each row is a DVC experiment of the full
default pipeline (`dvc exp run -n NAME -S ...`): the steps and training seconds to validation loss {args.target}
are read from its history (so they are as fine as its `train.eval_every_steps`), training seconds count the
first step's compilation and leave evaluation out.

{table}
""", encoding="utf-8")


if __name__ == "__main__":
    main()
