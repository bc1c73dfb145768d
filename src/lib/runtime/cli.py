"""What the project's command lines share: bad usage exits 1 (ExitCode.PREREQUISITES), as bad input does."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from src.exit_codes import ExitCode


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed option exiting 1 (bad input) instead of its 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.PREREQUISITES, f"error: {message}\n")
