"""Compose the config as Hydra will, without running: every bad override becomes one UserError."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from trainkit.config_check import check_config
from trainkit.errors import UserError


@dataclass
class Composed:
    cfg: DictConfig  # the job's config, resolved and checked
    run_dir: Path  # where a single run would write
    sweep_params: dict  # hydra.sweeper.params from the config (an experiment's sweep)


def compose_checked(overrides: list[str]) -> Composed:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="trainkit.configs", version_base=None):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException, OmegaConfBaseException) as e:
        raise UserError(one_line(e, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        OmegaConf.resolve(job_cfg)
        run_dir = Path(cfg.hydra.run.dir)
    except OmegaConfBaseException as e:
        raise UserError(one_line(e, overrides)) from None
    check_config(job_cfg)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    return Composed(job_cfg, run_dir, params or {})


def check_model_fits(cfg: DictConfig, payload: dict, checkpoint: Path) -> None:
    """Build the configured model and load the checkpoint's weights into it, before any file is written."""
    from trainkit.checkpoints import load_model_state
    from trainkit.datasets import DataSpec
    from trainkit.train import build_model

    if "data_spec" not in payload:
        return
    spec = DataSpec(**payload["data_spec"])
    dropout = float(cfg.regularization.get("dropout", {}).get("p", 0.0)) if cfg.regularization else 0.0
    load_model_state(build_model(cfg, spec, dropout), payload["model"], checkpoint)


def check_all(overrides: list[str], multirun: bool) -> None:
    """Compose the plain overrides; in a sweep also each value of each swept key once."""
    if not multirun:
        refuse_used_run_dir(compose_checked(overrides).run_dir)
        return
    parsed = parse(overrides)
    base = [o.input_line if not o.is_sweep_override() else first_value(o) for o in parsed]
    base = [b for b in base if b is not None]
    composed = compose_checked(base)
    swept = [(i, o) for i, o in enumerate(parsed) if o.is_sweep_override()]
    # Sweeps an experiment or hparams_search config defines (hydra.sweeper.params) are checked too.
    swept += [(None, o) for o in parse([f"{k}={v}" for k, v in composed.sweep_params.items()])]
    for i, o in swept:
        if o.is_interval_sweep():
            continue  # a continuous range: nothing to enumerate
        for value in o.sweep_string_iterator():
            trial = [b for j, b in enumerate(base) if j != i] + [f"{o.get_key_element()}={value}"]
            compose_checked(trial)


def refuse_used_run_dir(run_dir: Path) -> None:
    """A run never writes into another run's folder (Hydra would rewrite its .hydra/ files)."""
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists():
        raise UserError(f"hydra.run.dir={str(run_dir)!r} already holds a run; choose another folder, "
                        f"or continue that run with resume={run_dir}")


def parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise UserError(one_line(e, overrides)) from None


def first_value(o) -> str | None:
    if o.is_interval_sweep():
        return None
    for value in o.sweep_string_iterator():
        return f"{o.get_key_element()}={value}"
    return None


def one_line(e: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line errors, shortened to what the user needs: the key, the value, the choices."""
    text = str(e)
    if isinstance(e, MissingMandatoryValue):
        key = re.search(r"full_key: (\S+)", text)
        key = key.group(1) if key else "?"
        return f"{key} is required: set it on the command line ({key}=...) or in your config"
    if isinstance(e, MissingConfigException) or "Could not find" in text:
        m = re.search(r"Could not find '([^']+)'", text)
        missing = m.group(1) if m else "?"
        group, _, option = missing.rpartition("/")
        options = getattr(e, "options", None) or re.findall(r"^\t(\S+)$", text, flags=re.M)
        if group and options:
            return f"{group}={option} is not allowed: the {group} options are {', '.join(sorted(options))}"
        return f"{missing}: no such config"
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        key = m.group(1)
        given = next((o for o in overrides if o.split("=")[0].lstrip("+~") == key), key)
        full = re.search(r"full_key: (\S+)", text)
        full_key = full.group(1) if full else key
        parent = full_key.rpartition(".")[0]
        return f"{given}: there is no key '{full_key}' in the config" + (f" (see the keys of '{parent}' with --cfg job)" if parent else "") + \
            f"; to add a new key write +{given.lstrip('+')}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first
