"""Every use of Hydra's private API (hydra._internal), in one place.

Two things have no public equivalent in hydra-core 1.3: composing a config with the search path
`trainkit train --config-dir=...` builds (hydra.compose takes no config folder next to a
package's), and Hydra's own command-line parser (to split its flags from the overrides exactly as
the app will). pyproject.toml pins hydra-core to the 1.3 line these were tested on, and
tests/test_hydra_bridge.py fails, naming what moved, when Hydra changes underneath.
"""

from __future__ import annotations

import argparse

TESTED_HYDRA = "1.3"  # the minor version line pyproject.toml pins (hydra-core>=1.3.2,<1.4)


def hydra_for(sources):
    """A Hydra instance with the search path `trainkit train` itself builds: trainkit's configs,
    then each folder of `sources.dirs` (--config-dir), placed as Hydra's command-line handling places it."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(None, None, "pkg://trainkit.configs")
    for folder in sources.dirs:
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    return Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)


def hydra_arguments_parser() -> argparse.ArgumentParser:
    """The parser of a Hydra app's command line (its flags, then the overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
