"""Put back the outputs DVC removed before a stage that then failed.

    python -m src.pipeline.restore STAGE

DVC deletes a stage's outputs (all but ``persist: true`` ones) before it runs the stage's command. When
the command then fails, dvc.lock still records the last good outputs, and DVC's cache holds them (git
holds the ``cache: false`` metrics). Whatever the workspace has in their place instead (nothing, or what
the failed run left half-written) is replaced by them, so that the stage's outputs and dvc.lock agree
again; persistent outputs (training checkpoints) are never touched. Exit code 0 when everything is
back, 1 when something could not be.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _lost(repo, stage_name: str) -> list:
    """The outputs of ``stage_name`` whose workspace copy is not the one dvc.lock records, as DVC output objects."""
    stage, = repo.stage.collect(stage_name)
    return [out for out in stage.outs if not out.persist and out.hash_info and out.workspace_status()]


def lost_outputs(stage_name: str, root: str = ".") -> list[str]:
    """Paths (as dvc.yaml writes them) of the outputs of ``stage_name`` that are missing or not dvc.lock's."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        return [out.def_path for out in _lost(repo, stage_name)]


def restore(stage_name: str, root: str = ".") -> tuple[list[str], list[str]]:
    """Restore the removed outputs of ``stage_name``: (restored, not restorable: neither cached nor in git)."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        outs = _lost(repo, stage_name)
        cached = [out.def_path for out in outs if out.use_cache and not out.changed_cache()]
        from_git = [out.def_path for out in outs if not out.use_cache and repo.scm.is_tracked(out.def_path)]
        if cached:
            repo.checkout(targets=[str(Path(repo.root_dir) / path) for path in cached], force=True)
        if from_git:
            subprocess.run(["git", "checkout", "--", *from_git], cwd=repo.root_dir, check=True)
        restored = cached + from_git
        return restored, [out.def_path for out in outs if out.def_path not in restored]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="the stage whose outputs to restore, as dvc.yaml names it")
    args = parser.parse_args()
    try:
        restored, missing = restore(args.stage)
    except Exception as exc:  # a stage dvc.yaml lacks, no DVC repo here, a cache DVC cannot read
        print(f"restore: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
    if restored:
        print(f"restore: put back {', '.join(restored)} as dvc.lock records them")
    if missing:
        print(f"restore: {', '.join(missing)} are neither in DVC's cache nor in git: `dvc pull {' '.join(missing)}` "
              f"if a remote has them, else `dvc repro {args.stage}` once its error is fixed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
