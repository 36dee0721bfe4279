"""A run folder is data, not code: on resume, what it names may not call anything the user did not choose.

A run folder can come from a colleague or the internet. `resume=<run folder>` applies its
.hydra/overrides.yaml again, and the --config-dir and --config-name recorded in its
.hydra/hydra.yaml, and Hydra calls every `_target_` in the composed config. Trusted: the user's
own command line, the user's own --config-dir, trainkit's configs. Not trusted: a run folder's
files (and checkpoints, which engine/checkpoints.py reads as data only).

So before anything is imported or built from the composed config: every `_target_` must be named
by a trusted source or be a class of the kinds trainkit builds, and Hydra's own settings (logging,
callbacks, output folders, environment) must be those the trusted sources give.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from trainkit.errors import UserError

# The namespaces trainkit ships configs for. A name in them is not enough on its own: torch.hub.load
# runs a hubconf.py from any folder and torch.distributed's SubprocessHandler starts a command, so a
# target from a run folder must also be a class of a kind trainkit builds (KNOWN_KINDS).
TRUSTED_NAMESPACES = ("trainkit", "torch", "torchvision", "albumentations")
KNOWN_KINDS = ("torch.nn.Module", "torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler",
               "albumentations.core.transforms_interface.BasicTransform", "albumentations.core.composition.BaseCompose")
# Hydra settings a resumed run's folder may differ in: what Hydra fills in itself, and the sweeper
# and launcher, which a single run (resume= refuses -m) never builds.
FREE_HYDRA_SETTINGS = ("runtime", "overrides", "sweeper", "launcher", "mode", "job.name", "job.override_dirname",
                       "job.config_name", "job.id", "job.num")
TARGET_IN_YAML = re.compile(r"""_target_['"]?\s*:\s*['"]?([A-Za-z_][\w.]*)""")


@dataclass(frozen=True)
class FolderSettings:
    """What a resume takes from a run folder, none of it trusted."""

    run_dir: Path
    overrides: tuple[str, ...]  # its .hydra/overrides.yaml
    config_dirs: tuple[str, ...] = ()  # the --config-dir it records, used because the user gave none


def check_folder_settings(folder: FolderSettings, user_overrides: list[str], overrides: list[str], sources,
                          user_sources) -> None:
    """Refuse, in one line, a target or a Hydra setting that only the run folder asks for.

    `overrides` and `sources` are what the resume composes with (the folder's and the user's);
    `user_overrides` and `user_sources` are the user's own (trainkit's configs are always trusted)."""
    from trainkit.run.resume import first_difference

    refuse_hydra_overrides(folder, user_overrides)
    composed = compose_raw(overrides, sources)
    if composed is None:
        return  # it does not compose: the pre-run check says why, before anything is built
    trusted = named_targets(user_overrides, user_sources.dirs)
    for key, target in targets_in(composed):
        if target not in trusted and not of_known_kind(target):
            raise UserError(untrusted_target(folder, key, target))
    # Hydra's node from the trusted sources alone: the user's root config and folders, and the
    # hydra.* overrides, all of them the user's or this resume's own (refuse_hydra_overrides).
    own = compose_raw([o for o in overrides if is_hydra_key(o)], user_sources)
    if own is None:
        return
    settings, expected = hydra_settings(composed), hydra_settings(own)
    if settings != expected:
        changed, _, _ = first_difference("hydra", settings, expected)
        raise UserError(f"resume={folder.run_dir}: {origin(folder, None)} changes Hydra's own setting {changed}, "
                        f"which a run folder may not (it is data, not code); {advice(folder, None)}")


def refuse_hydra_overrides(folder: FolderSettings, user_overrides: list[str]) -> None:
    """Hydra records only the job's overrides in overrides.yaml: a hydra.* line there was written in."""
    for line in folder.overrides:
        if line not in user_overrides and is_hydra_key(line):
            raise UserError(f"resume={folder.run_dir}: its .hydra/overrides.yaml sets {line}, a setting of Hydra "
                            f"itself, which a run folder may not (it is data, not code); if you trust it, type it "
                            f"yourself: trainkit train resume={shlex.quote(str(folder.run_dir))} {shlex.quote(line)}")


def is_hydra_key(override: str) -> bool:
    """hydra.x=, hydra/launcher=, ~hydra.x, or a config placed under hydra (group@hydra.x=)."""
    key = override.split("=", 1)[0].lstrip("~+")
    group, _, package = key.partition("@")
    return re.split(r"[./]", group)[0] == "hydra" or re.sub(r"^_global_\.?", "", package).startswith("hydra")


def compose_raw(overrides: list[str], sources):
    """The full config (Hydra's node too) as Hydra would compose it, nothing resolved or built; None if it does not compose."""
    import yaml
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from trainkit.cli.hydra_bridge import hydra_for
    from trainkit.cli.preflight import COMPOSE_ERRORS

    GlobalHydra.instance().clear()
    try:
        return hydra_for(sources).compose_config(sources.name, overrides, run_mode=RunMode.RUN, from_shell=True)
    except (*COMPOSE_ERRORS, yaml.YAMLError):
        return None
    finally:
        GlobalHydra.instance().clear()


def named_targets(user_overrides: list[str], user_dirs) -> set[str]:
    """Targets the trusted sources name: trainkit's configs, the user's --config-dir, the user's command line."""
    from importlib.resources import files

    folders = [Path(str(files("trainkit.configs"))), *map(Path, user_dirs)]
    names = {m for folder in folders for path in folder.rglob("*.yaml") for m in TARGET_IN_YAML.findall(path.read_text())}
    return names | set(typed_strings(user_overrides))


def typed_strings(overrides: list[str]):
    """Every string the user typed as (part of) an override's value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def leaves(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from leaves(item)
        elif isinstance(value, list):
            for item in value:
                yield from leaves(item)
        elif isinstance(value, str):
            yield value

    parser = OverridesParser.create()
    for line in overrides:
        try:
            yield from leaves(parser.parse_override(line).value())
        except Exception:  # a sweep or a syntax error: the pre-run check reports those
            continue


def targets_in(cfg) -> list[tuple[str, str]]:
    """(key, target) for every `_target_` of the job's config, interpolations resolved where they resolve."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        tree = OmegaConf.to_container(job, resolve=True)
    except OmegaConfBaseException:  # an interpolated target then reads as its ${...} text, which is not trusted
        tree = OmegaConf.to_container(job, resolve=False)
    found = []

    def walk(node, path: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((child, str(value)))
            else:
                walk(value, child)

    walk(tree, "")
    return found


def of_known_kind(target: str) -> bool:
    """A class in trainkit, torch, torchvision or albumentations of a kind trainkit builds; only
    modules of those packages are ever imported to tell."""
    from trainkit.config.check import locate

    if target.split(".")[0] not in TRUSTED_NAMESPACES:
        return False
    try:
        found = locate(target)
    except Exception:  # a module that fails on import
        return False
    kinds = tuple(kind for kind in map(locate, KNOWN_KINDS) if kind is not None)
    return isinstance(found, type) and issubclass(found, kinds)


def hydra_settings(cfg) -> dict:
    """Hydra's node, unresolved, without what a resumed run's folder may differ in."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg.hydra, resolve=False)
    for key in FREE_HYDRA_SETTINGS:
        parent, _, leaf = key.rpartition(".")
        ((settings.get(parent) or {}) if parent else settings).pop(leaf, None)
    return settings


def origin(folder: FolderSettings, target: str | None) -> str:
    if target is not None and any(target in line for line in folder.overrides):
        return "its .hydra/overrides.yaml"
    if folder.config_dirs:
        return f"the config folder {folder.config_dirs[0]} that its .hydra/hydra.yaml records"
    return "its settings"


def advice(folder: FolderSettings, target: str | None) -> str:
    lines = [line for line in folder.overrides if target is not None and target in line]
    if lines:
        return ("if you trust it, type that override yourself: trainkit train "
                f"resume={shlex.quote(str(folder.run_dir))} {shlex.quote(lines[0])}")
    if folder.config_dirs:
        return f"if you trust that folder, pass it yourself: --config-dir={shlex.quote(folder.config_dirs[0])}"
    return "start a new run from your own config, or give your own --config-dir"


def untrusted_target(folder: FolderSettings, key: str, target: str) -> str:
    return (f"resume={folder.run_dir}: {key}={target} comes from {origin(folder, target)}, and a run folder is data, "
            "not code: a target from it must be trainkit's own, or a trainkit, torch, torchvision or albumentations "
            f"class of a kind trainkit builds (module, optimizer, LR scheduler, augmentation); {advice(folder, target)}")
