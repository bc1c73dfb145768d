"""Put back the outputs DVC removed before a stage that then failed, exactly as dvc.lock records them.

    python -m src.pipeline.restore STAGE

DVC deletes a stage's outputs (all but ``persist: true`` ones) before it runs the stage's command. When the
command then fails, dvc.lock still records the last good outputs by their md5. What the workspace has in
their place instead (nothing, or what the failed run wrote) is replaced by the copy with that md5, so that
the stage's outputs and dvc.lock agree again; persistent outputs (training checkpoints) are never touched.

Where the copies come from:

- A cached output: from DVC's cache (``dvc checkout``), which holds every version DVC committed.
- A ``cache: false`` output (every metrics file, the samples): DVC keeps no copy of it, only its md5, and
  git holds only the committed version, while the last good run (an experiment, an uncommitted ``dvc repro``)
  is usually newer. So every stage, when it succeeds under DVC, adds its ``cache: false`` outputs to DVC's
  cache by their md5 (``keep_uncached_outputs``, from ``run_stage``), as DVC's own run-cache does for the
  stages it can cache; restore takes the copy whose md5 dvc.lock records from there, else git HEAD's copy
  when its md5 is that one. The files stay in git and ``cache: false`` in dvc.yaml, so `dvc metrics show/diff`,
  `dvc exp show` and `dvc plots show/diff` read them from git revisions and experiments as before.

  The other designs fall short: ``cache: true`` metrics leave git (a clone shows none before `dvc pull`, and
  every reader of a revision needs its cache); ``persist: true`` metrics are not deleted, but a failing stage
  overwrites them itself (validate writes its verdict, train its history every epoch), and persist turns
  DVC's run-cache off for the stage.

What the failed run wrote in a ``cache: false`` output's place (validate's verdict on what failed, say) is
not deleted: it is moved to ``failed/`` (``paths.FAILED_RUN``, git-ignored) under the same path, the last
failed run's only. Nothing is reported as put back before its md5 is checked against dvc.lock's. An output
whose recorded copy is nowhere (never made under DVC, or removed by `dvc gc`, which keeps only what
dvc.lock files cache) is named, with what to do, and the exit code is 1; 0 when everything is back.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from src import paths
from src.atomic import write_atomic


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _lost(repo, stage_name: str) -> list:
    """The outputs of ``stage_name`` whose workspace copy is not the one dvc.lock records, as DVC output objects."""
    stage, = repo.stage.collect(stage_name)
    return [out for out in stage.outs if not out.persist and out.hash_info and out.workspace_status()]


def lost_outputs(stage_name: str, root: str = ".") -> list[str]:
    """Paths (as dvc.yaml writes them) of the outputs of ``stage_name`` that are missing or not dvc.lock's."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        return [out.def_path for out in _lost(repo, stage_name)]


def keep_uncached_outputs(stage_name: str, root: str = ".") -> list[str]:
    """Add the ``cache: false`` files of ``stage_name`` that the workspace holds to DVC's cache, by their md5
    (DVC's hash of a file), so that ``restore`` finds the copy dvc.lock is about to record; their paths."""
    from dvc.repo import Repo

    kept = []
    with Repo(root) as repo:
        stage, = repo.stage.collect(stage_name)
        cache = repo.cache.local
        for out in stage.outs:
            if out.use_cache or not out.isfile():
                continue
            cache.add(out.fs_path, out.fs, _md5(Path(out.fs_path).read_bytes()))
            kept.append(out.def_path)
    return kept


def _recorded_copy(repo, out) -> bytes | None:
    """The bytes of ``out`` whose md5 is dvc.lock's, from DVC's cache or git HEAD; None when neither has them."""
    recorded = out.hash_info.value
    cached = Path(repo.cache.local.oid_to_path(recorded))
    if cached.is_file() and _md5(data := cached.read_bytes()) == recorded:
        return data
    where = Path(out.fs_path).relative_to(repo.root_dir).as_posix()
    committed = subprocess.run(["git", "show", f"HEAD:./{where}"], cwd=repo.root_dir, capture_output=True)
    if committed.returncode == 0 and _md5(committed.stdout) == recorded:
        return committed.stdout
    return None


def _keep_failed(repo, out) -> str | None:
    """Move what the failed run wrote as ``out`` (a file) to the same path under FAILED_RUN; that path, or None."""
    written = Path(out.fs_path)
    if not written.is_file():
        return None
    kept = Path(repo.root_dir) / paths.FAILED_RUN / written.relative_to(repo.root_dir)
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.replace(written, kept)
    return str(kept.relative_to(repo.root_dir))


def restore(stage_name: str, root: str = ".") -> tuple[list[str], list[str], list[str]]:
    """Restore the removed outputs of ``stage_name``: (restored and checked against dvc.lock, not restorable,
    where the failed run's versions of the restored ``cache: false`` outputs are kept)."""
    from dvc.repo import Repo

    kept = []
    with Repo(root) as repo:
        outs = _lost(repo, stage_name)
        cached = [out for out in outs if out.use_cache and not out.changed_cache()]
        if cached:
            repo.checkout(targets=[out.fs_path for out in cached], force=True)
        for out in outs:
            if not out.use_cache and (data := _recorded_copy(repo, out)) is not None:
                if (where := _keep_failed(repo, out)) is not None:
                    kept.append(where)
                write_atomic(Path(out.fs_path), data)
    with Repo(root) as repo:  # read afresh: every output put back must now be the one dvc.lock records
        still = {out.def_path for out in _lost(repo, stage_name)}
    return [out.def_path for out in outs if out.def_path not in still], sorted(still), kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="the stage whose outputs to restore, as dvc.yaml names it")
    args = parser.parse_args()
    try:
        restored, missing, kept = restore(args.stage)
    except Exception as exc:  # a stage dvc.yaml lacks, no DVC repo here, a cache DVC cannot read
        print(f"restore: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
    if restored:
        print(f"restore: put back {', '.join(restored)} as dvc.lock records them (md5 checked)")
    if kept:
        print(f"restore: what the failed run wrote in their place is kept as {', '.join(kept)}")
    if missing:
        print(f"restore: {', '.join(missing)}: the copy dvc.lock records is neither in DVC's cache nor in git HEAD, "
              f"so what is there is not it: `dvc pull {' '.join(missing)}` if a remote has it, else "
              f"`dvc repro {args.stage}` once its error is fixed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
