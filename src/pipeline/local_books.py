"""Stage `local_books`: the sha256 of every local file named in corpus.sources (exit code 2 on failure).

    python -m src.pipeline.local_books [--params params.yaml]

A stage's deps are fixed in dvc.yaml, but which local files make the corpus is a param. So this stage
is always run (``always_changed``: `dvc status` always lists it) and writes the files' hashes, and
`download` depends on what it writes: editing a local book re-runs download and every stage after it;
when no local book changed, its output is the same bytes and nothing else runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import CorpusConfig, load_config
from src.data.fetch import DownloadError, local_sha256
from src.pipeline.stage import run_stage, stage_arguments

log = logging.getLogger(__name__)


def hash_local_books(cfg: CorpusConfig, *, out: Path = paths.LOCAL_BOOKS) -> dict[str, str]:
    """{book name: sha256} of the local sources (relative paths are from the project root)."""
    hashes = {source.name: local_sha256(source.path, f"corpus.sources {source.name}")
              for source in cfg.sources if source.is_local}
    write_json(out, hashes)
    for name, digest in hashes.items():
        log.info("%s: sha256 %s", name, digest)
    return hashes


def main() -> None:
    args = stage_arguments(__doc__)
    run_stage("local_books", lambda: hash_local_books(load_config(args.params).corpus),
              expected=(DownloadError,))


if __name__ == "__main__":
    main()
