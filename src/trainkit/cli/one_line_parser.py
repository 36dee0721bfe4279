"""argparse for the subcommands that are not Hydra apps, with its errors as one line and exit code 2."""

from __future__ import annotations

import argparse

from trainkit.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage and exits; trainkit says one line
        raise UserError(f"{self.prog}: {message} (trainkit {self.prog.split()[-1]} --help)")
