"""Where a command may put what it writes: never over, into or around the project's own files.

    python -m src.pipeline.output_dir DIR     # exit 0: DIR may take the pipeline's artifacts; 1: why not, one line

The pipeline's outputs live in data/, metrics/ and dist/tinytransformer/ (src/paths.py), beside its local
books (books/) and DVC's and git's own directories, under the project root. A directory a command is told to write (train_pipeline.sh's
--output-dir, create_bundle's --out) must not be any of them, lie inside one, or hold one (the root, or a
parent of it, holds them all): copying into them would change outputs DVC tracks, and replacing one would
delete them. Paths are compared once resolved (symbolic links followed, ``..`` taken), so no other spelling of
the same directory gets through. The project root is the code's checkout and the working directory alike:
the pipeline's paths are relative to where it runs.

A file a command writes (a plot, a page) is refused the same way, and replaces only a file that begins as the
command's own do (``written_file_problem``): never a user's file given by mistake.

An export directory may hold the user's own files: copying the artifacts in adds or replaces those of the
same names. The bundle in it (``paths.BUNDLE_DIR``'s name) is replaced whole, so whatever is there under that
name must be a bundle (``src.lib.runtime.bundle.replaceable``), never a directory of other files that a copy
would merge into.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from src import paths
from src.exit_codes import ExitCode
from src.lib.runtime.bundle import BundleError, replaceable
from src.lib.runtime.cli import ArgumentParser

CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout this code runs from
# What lies under the project root and no command's output may touch: the pipeline's outputs (src/paths.py), its
# local books (a dependency DVC hashes: a file copied in would change the corpus) and DVC's and git's own
# directories (a cache, a repository).
PROTECTED = (paths.DATA, paths.METRICS, paths.BUNDLE_DIR, paths.BOOKS_DIR, Path(".dvc"), Path(".git"))


def project_roots() -> list[Path]:
    """The project's root as the code's checkout and as the working directory (stages run from the root)."""
    return sorted({CODE_ROOT, Path.cwd().resolve()})


def overlap(target: Path | str, allowed: Path | None = None) -> str | None:
    """Why ``target`` may not be written: it is a project root or holds one, or it is, holds or lies in one
    of PROTECTED; None when it overlaps none. ``allowed`` (one of PROTECTED, say paths.BUNDLE_DIR for the
    bundle itself) may be ``target`` exactly."""
    try:
        resolved = Path(target).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
        return f"{target} cannot be used ({getattr(exc, 'strerror', None) or exc})"
    for root in project_roots():
        if root.is_relative_to(resolved):
            return f"{target} is the project's root or holds it ({root})"
        if allowed is not None and resolved == (root / allowed).resolve():
            continue
        for protected in PROTECTED:
            owned = (root / protected).resolve()
            if resolved.is_relative_to(owned) or owned.is_relative_to(resolved):
                relation = "is" if resolved == owned else "lies in" if resolved.is_relative_to(owned) else "holds"
                return f"{target} {relation} the project's own {protected.as_posix()}/"
    return None


def export_dir_problem(target: Path | str) -> str | None:
    """Why ``target`` may not take a copy of the pipeline's artifacts (models, tokenizer, metrics, the bundle);
    None when it may: outside the project's own files, a directory or nothing yet, and any bundle in it ours."""
    problem = overlap(target)
    if problem:
        return problem
    target = Path(target)
    try:
        if target.exists() and not target.is_dir():
            return f"{target} is a file, not a directory"
        replaceable(target / paths.BUNDLE_DIR.name)
    except OSError as exc:
        return f"{target} cannot be used ({exc.strerror or exc})"
    except BundleError as exc:
        return str(exc)
    return None


HEAD_BYTES = 4096  # how much of an existing file ``written_file_problem`` reads to recognise it


def written_file_problem(target: Path | str, is_ours: Callable[[bytes], bool], kind: str) -> str | None:
    """Why a command that writes ``kind`` files may not write ``target``; None when it may: outside the
    project's own files, and nothing there yet or a file whose first HEAD_BYTES ``is_ours`` recognises."""
    problem = overlap(target)
    if problem:
        return problem
    target = Path(target)
    try:
        if not target.exists():
            return None
        if not target.is_file():
            return f"{target} is not a file"
        with target.open("rb") as f:
            if not is_ours(f.read(HEAD_BYTES)):
                return f"{target} is not {kind}: only one is replaced"
    except OSError as exc:
        return f"{target} cannot be used ({exc.strerror or exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m src.pipeline.output_dir", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="where the pipeline's artifacts would be copied (--output-dir)")
    args = parser.parse_args(argv)
    problem = export_dir_problem(args.directory)
    if problem:
        print(f"error: --output-dir {problem}", file=sys.stderr)
        return ExitCode.PREREQUISITES
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
