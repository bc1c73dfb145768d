"""Stage `check_params`: validate params.yaml before any other stage runs (exit code 1 on a bad value).

    python -m src.pipeline.check_params [--params params.yaml] [--set KEY=VALUE ...] [--mirror URL_OR_DIR] [--names]

DVC removes a stage's outputs before it runs the stage, so a stage that starts, reads a bad value
and fails has already cost the user its last good outputs. This stage comes first in dvc.yaml and
depends on params.yaml as a file: any edit re-runs it, and a bad value stops `dvc repro` here, before
any other stage's outputs are touched. Its output is a constant marker, so a run of it never makes
another stage run.

``--set`` checks the values a `dvc exp run -S KEY=VALUE` would write, without writing them, and
``--mirror`` a corpus mirror (TT_CORPUS_MIRROR): ./scripts/train_pipeline.sh checks both before it
starts DVC. ``--names`` prints instead the ``names.*=VALUE`` the params with those values call for, where
they differ from the params' (the corpus and tokenizer files are named for what they hold), a line each.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from src import paths
from src.atomic import write_atomic
from src.config import PARAMS_FILE, ConfigError, config_from_dict, names_called_for, parse_yaml
from src.data.fetch import DownloadError, check_mirror
from src.pipeline.stage import PrerequisiteError, run_stage

MARKER = b"params.yaml passed validation (this file never changes, so it never makes another stage run)\n"


def with_overrides(raw: Any, overrides: list[str]) -> Any:
    """``raw`` params with ``KEY=VALUE`` overrides applied as `dvc exp run -S` applies them (values read as YAML)."""
    params = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: params.yaml has no section '{'.'.join(parents)}'")
        node[leaf] = parse_yaml(value, f"--set {key}")
    return params


def read_params(params_file: Path, overrides: list[str]) -> Any:
    """The parsed params file with ``overrides`` applied."""
    try:
        text = params_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{params_file}: cannot be read ({exc})") from None
    raw = parse_yaml(text, str(params_file)) or {}
    return with_overrides(raw, overrides) if overrides else raw


def names_overrides(params_file: Path, overrides: list[str]) -> list[str]:
    """``names.KEY=VALUE`` for each name the params (with ``overrides``) call for that they do not hold."""
    raw = read_params(params_file, overrides)
    held = raw.get("names") if isinstance(raw, dict) and isinstance(raw.get("names"), dict) else {}
    return [f"names.{key}={value}" for key, value in names_called_for(raw, str(params_file)).items()
            if held.get(key) != value]


def check_params(params_file: Path, overrides: list[str], mirror: str | None) -> None:
    config_from_dict(read_params(params_file, overrides), str(params_file))
    if mirror is not None:
        try:
            check_mirror(mirror)
        except DownloadError as exc:
            raise PrerequisiteError(str(exc)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="check this value in place of the file's (nothing is written)")
    parser.add_argument("--mirror", help="check a corpus mirror: an http(s) base URL or a local directory")
    parser.add_argument("--names", action="store_true",
                        help="print the names.*=VALUE these params call for where they differ, instead of checking")
    args = parser.parse_args()

    def body() -> None:
        if args.names:
            print("\n".join(names_overrides(args.params, args.overrides)))
            return
        check_params(args.params, args.overrides, args.mirror)
        if not args.overrides and args.mirror is None:
            write_atomic(paths.PARAMS_CHECKED, MARKER)

    run_stage("check_params", body)


if __name__ == "__main__":
    main()
