"""The exit codes of every entry point: the pipeline's stages, the CLI and scripts/train_pipeline.sh.

The script reads them from ``python -m src.exit_codes`` (shell assignments), so this is their one definition.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    PREREQUISITES = 1  # bad params or options, missing inputs or tools, not enough disk
    CORPUS = 2
    TOKENIZER = 3
    TRAINING = 4
    VALIDATION = 5  # a budget or quality check failed
    INTERRUPTED = 130  # Ctrl+C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM (128 + SIGTERM)


# The code a failing stage exits with (its own work failed: bad params and missing inputs are PREREQUISITES).
STAGE_FAILURE = {"check_params": ExitCode.PREREQUISITES, "local_books": ExitCode.CORPUS, "download": ExitCode.CORPUS,
                 "corpus": ExitCode.CORPUS, "tokenize": ExitCode.TOKENIZER, "train": ExitCode.TRAINING,
                 "bundle": ExitCode.TRAINING, "validate": ExitCode.VALIDATION}

SUMMARY = "0 ok, 1 prerequisites (tools, inputs, bad values), 2 corpus, 3 tokenizer, 4 training, 5 validation"


def shell_assignments() -> str:
    """``EXIT_<NAME>=<code>`` for every code, ``STAGE_EXIT_<stage>=<code>`` for every stage, and the summary."""
    lines = [f"EXIT_{code.name}={code.value}" for code in ExitCode]
    lines += [f"STAGE_EXIT_{stage}={code.value}" for stage, code in STAGE_FAILURE.items()]
    lines.append(f"EXIT_CODES_SUMMARY='{SUMMARY}'")
    return "\n".join(lines)


if __name__ == "__main__":
    print(shell_assignments())
