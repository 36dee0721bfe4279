"""argparse for the subcommands that are not Hydra apps, with its errors as one line and exit code 2."""

from __future__ import annotations

import argparse

from trainkit.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage and exits; trainkit says one line
        raise UserError(f"{self.prog}: {message} (trainkit {self.prog.split()[-1]} --help)")


def whole_number_from_1(text: str) -> int:
    """An argparse type for counts (--top, --top-k): its error names the value and what is allowed."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a whole number >= 1")
    return int(text)
