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


def compose_checked(overrides: list[str], config_dirs: list[str] = ()) -> Composed:
    """The config Hydra will compose for these overrides (and the user's --config-dir), checked."""
    search = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in config_dirs)}]"] if config_dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="trainkit.configs", version_base=None):
            cfg = compose(config_name="train", overrides=[*overrides, *search], return_hydra_config=True)
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
    check_sweep_direction(cfg)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    return Composed(job_cfg, run_dir, params or {})


def check_sweep_direction(cfg: DictConfig) -> None:
    """An optimising sweeper must push the returned metric the way trainer.mode says is better."""
    direction = cfg.hydra.sweeper.get("direction")
    wanted = {"max": "maximize", "min": "minimize"}.get(cfg.trainer.mode)
    if isinstance(direction, str) and wanted and direction != wanted:
        raise UserError(f"hydra.sweeper.direction={direction} is not allowed with trainer.mode={cfg.trainer.mode} "
                        f"(monitoring {cfg.trainer.monitor}): use hydra.sweeper.direction={wanted}")


# What a resumed run must share with the run it continues: anything else changes the training
# it is meant to continue (and optimizer or schedule state would not fit the new objects).
SAME_ON_RESUME = ("model", "norm", "activation", "init", "optimizer", "schedule", "regularization", "augmentation",
                  "dataset.name", "dataset.root", "dataset.val_fraction", "dataset.test_fraction", "dataset.preprocess",
                  "dataset.class_weights", "dataset.balanced_sampler", "trainer.batch_size", "trainer.seed",
                  "trainer.limit_train_batches")
# Schedules planned for the run's whole length: extending trainer.epochs would replan them mid-run.
LENGTH_PLANNED_SCHEDULES = ("trainkit.schedules.cosine", "trainkit.schedules.linear", "trainkit.schedules.onecycle")


def check_resumable(cfg: DictConfig, payload: dict, checkpoint: Path) -> None:
    """The checkpoint can continue this config: same training setup, and weights that fit the model."""
    old = OmegaConf.create(payload.get("config") or {})
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in SAME_ON_RESUME:
        was, now = plain(OmegaConf.select(old, key)), plain(OmegaConf.select(new, key))
        if was is not None and was != now:
            where, was_leaf, now_leaf = first_difference(key, was, now)
            raise UserError(f"{where}={now_leaf!r} is not allowed on resume: the run in {checkpoint} was trained with "
                            f"{where}={was_leaf!r}, and a resumed run continues the same training; start a new run to change it")
    old_epochs = OmegaConf.select(old, "trainer.epochs")
    if old_epochs is not None and old_epochs != cfg.trainer.epochs and cfg.schedule.get("_target_") in LENGTH_PLANNED_SCHEDULES:
        raise UserError(f"trainer.epochs={cfg.trainer.epochs} is not allowed on resume: the run was planned for {old_epochs} "
                        f"epochs and its schedule ({cfg.schedule._target_.rsplit('.', 1)[1]}) follows that length; "
                        "start a new run, or use a schedule without a planned length (e.g. step, plateau) to extend runs")
    check_model_fits(cfg, payload, checkpoint)


def plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def first_difference(key: str, was, now) -> tuple[str, object, object]:
    """The first leaf where two config values differ: (its key, old value, new value)."""
    if isinstance(was, dict) and isinstance(now, dict):
        for k in [*was, *(k for k in now if k not in was)]:
            if was.get(k) != now.get(k):
                return first_difference(f"{key}.{k}", was.get(k), now.get(k))
    return key, was, now


def check_model_fits(cfg: DictConfig, payload: dict, checkpoint: Path) -> None:
    """Build the configured model and load the checkpoint's weights into it, before any file is written."""
    from trainkit.checkpoints import load_model_state
    from trainkit.datasets import DataSpec
    from trainkit.regularization import Regularizers
    from trainkit.train import build_model

    if "data_spec" not in payload:
        return
    spec = DataSpec(**payload["data_spec"])
    dropout = Regularizers(cfg.regularization, num_classes=spec.num_classes).dropout
    load_model_state(build_model(cfg, spec, dropout), payload["model"], checkpoint)


def check_all(overrides: list[str], multirun: bool, config_dirs: list[str] = ()) -> None:
    """Compose the plain overrides; in a sweep also each value of each swept key once."""
    if not multirun:
        refuse_used_run_dir(compose_checked(overrides, config_dirs).run_dir)
        return
    parsed = parse(overrides)
    base = [o.input_line if not o.is_sweep_override() else first_value(o) for o in parsed]
    base = [b for b in base if b is not None]
    composed = compose_checked(base, config_dirs)
    swept = [(i, o) for i, o in enumerate(parsed) if o.is_sweep_override()]
    # Sweeps an experiment or hparams_search config defines (hydra.sweeper.params) are checked too.
    swept += [(None, o) for o in parse([f"{k}={v}" for k, v in composed.sweep_params.items()])]
    for i, o in swept:
        if o.is_interval_sweep():
            continue  # a continuous range: nothing to enumerate
        for value in o.sweep_string_iterator():
            trial = [b for j, b in enumerate(base) if j != i] + [f"{o.get_key_element()}={value}"]
            compose_checked(trial, config_dirs)


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
