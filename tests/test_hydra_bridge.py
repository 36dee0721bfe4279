"""The contract with Hydra's private API (cli/hydra_bridge.py): fails, naming what moved, when Hydra changes."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from omegaconf import OmegaConf

from trainkit.cli.hydra_bridge import TESTED_HYDRA, hydra_arguments_parser, hydra_for
from trainkit.cli.preflight import ConfigSources

ROOT = Path(__file__).parents[1]


def test_the_installed_hydra_is_the_version_line_the_bridge_was_tested_on():
    installed = version("hydra-core")
    assert installed.startswith(TESTED_HYDRA + "."), (
        f"hydra-core {installed} is installed; cli/hydra_bridge.py uses Hydra internals tested on {TESTED_HYDRA}.x: "
        "check them (this file) before widening the pin in pyproject.toml")
    assert '"hydra-core>=1.3.2,<1.4"' in (ROOT / "pyproject.toml").read_text(), "pyproject.toml no longer pins hydra-core"


def test_private_hydra_is_used_in_one_module_only():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py") if "hydra._internal" in p.read_text()]
    assert users == ["src/trainkit/cli/hydra_bridge.py"], f"hydra._internal is imported outside cli/hydra_bridge.py: {users}"


def test_the_private_compose_gives_what_the_public_api_composes(compose_train, tmp_path):
    """hydra_for(...).compose_config is Hydra._internal's; it must equal hydra.compose, and a
    --config-dir folder must come before trainkit's own configs."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    overrides = ["optimizer=adam", "trainer.epochs=2"]
    public = OmegaConf.to_container(compose_train(*overrides), resolve=False)
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "mine.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nlr: 0.5\n")
    GlobalHydra.instance().clear()
    try:
        hydra = hydra_for(ConfigSources(dirs=(str(tmp_path),)))
        private = hydra.compose_config("train", overrides, run_mode=RunMode.RUN, from_shell=True)
        mine = hydra.compose_config("train", ["optimizer=mine"], run_mode=RunMode.RUN, from_shell=True)
    except (ImportError, AttributeError, TypeError) as e:
        raise AssertionError(f"Hydra's private compose API changed ({type(e).__name__}: {e}): update cli/hydra_bridge.py") from e
    finally:
        GlobalHydra.instance().clear()
    job = {k: v for k, v in OmegaConf.to_container(private, resolve=False).items() if k != "hydra"}
    assert job == {k: v for k, v in public.items() if k != "hydra"}
    assert mine.optimizer.lr == 0.5


def test_hydras_parser_splits_flags_from_overrides_as_the_cli_expects():
    parser = hydra_arguments_parser()
    args = ["--config-dir", "/x", "-m", "optimizer=sgd,adam", "--cfg", "job", "trainer.epochs=2"]
    parsed, _ = parser.parse_known_intermixed_args(args)
    assert (parsed.config_dir, parsed.multirun, parsed.cfg, parsed.overrides) == (
        "/x", True, "job", ["optimizer=sgd,adam", "trainer.epochs=2"]), "Hydra's argument parser changed"
    # cli/main.py reads which flags take a value from argparse's table of options.
    flags = {flag: action.nargs for flag, action in parser._option_string_actions.items()}
    assert {"--config-dir", "--config-name", "--cfg", "--multirun", "--help", "--hydra-help"} <= set(flags)
    assert re.fullmatch(r"None|\?", str(flags["--config-dir"])) and flags["--multirun"] == 0
