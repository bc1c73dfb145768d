"""What the project's command lines share: bad usage exits 1, the documented code for bad input."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_BAD_INPUT = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed option exiting 1 (the documented code for bad input) instead of its 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")
