"""Compose the config as Hydra will, without running: every bad override becomes one UserError."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, ConfigTypeError, MissingMandatoryValue,
                              OmegaConfBaseException, ValidationError)

from trainkit.cli.hydra_bridge import hydra_for
from trainkit.config.check import check_config, missing_key
from trainkit.config.rules import describe, did_you_mean, rule_of
from trainkit.errors import UserError, allowed, user_error_in
from trainkit.memory import refuse_beyond_memory
from trainkit.metrics import resolve_mode
from trainkit.run.folder import refuse_unwritable, refuse_used_run_dir, refuse_used_sweep_dir


@dataclass(frozen=True)
class ConfigSources:
    """Where a config comes from: trainkit's configs plus the user's --config-dir folders, and
    the root config (--config-name) with the top-level keys it adds to train.yaml's (preview's out, n)."""

    dirs: tuple[str, ...] = ()
    name: str = "train"
    root_keys: tuple[str, ...] = ()


@dataclass
class Composed:
    cfg: DictConfig  # the job's config, resolved and checked
    run_dir: Path  # where a single run would write
    sweep_dir: Path  # where a sweep would write
    sweep_params: dict  # hydra.sweeper.params from the config (an experiment's sweep)
    sweeper: DictConfig | None = None  # hydra.sweeper: a trainkit_optuna search may continue in a used folder


COMPOSE_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException, OmegaConfBaseException)


def compose_checked(overrides: list[str], sources: ConfigSources = ConfigSources(), *, signatures: bool = True,
                    build: bool = True) -> Composed:
    """The config Hydra will compose for these overrides and config sources, checked.

    Composition, keys, types and ranges need neither torch nor albumentations; `signatures`
    adds the checks that import each _target_ (its arguments), `build` those that build the
    cheap parts. Printing a config (--cfg) needs neither."""
    GlobalHydra.instance().clear()
    try:
        hydra = hydra_for(sources)
        try:
            cfg = hydra.compose_config(sources.name, overrides, run_mode=RunMode.RUN, from_shell=True)
        except yaml.YAMLError as e:
            raise UserError(yaml_error(e)) from None
        except COMPOSE_ERRORS as e:
            raise UserError(one_line(e, overrides, group_options)) from None
        refuse_non_mapping_options(cfg, sources)
        refuse_deleting_required(overrides, cfg, sources.root_keys)
    finally:
        GlobalHydra.instance().clear()
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        OmegaConf.resolve(job_cfg)
        run_dir, sweep_dir = Path(cfg.hydra.run.dir), Path(cfg.hydra.sweep.dir)
    except OmegaConfBaseException as e:
        key = unresolvable_key(job_cfg) or unresolvable_key(cfg.hydra.run, "hydra.run")  # resolve stopped at the bad key
        message = one_line(e, overrides)
        raise UserError(f"{key}: {message}" if key and not message.startswith(key) else message) from None
    check_config(job_cfg, sources.root_keys, signatures=signatures)
    if build:
        check_buildable(job_cfg)
    check_sweep_direction(cfg)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    return Composed(job_cfg, run_dir, sweep_dir, params or {}, cfg.hydra.sweeper)


def refuse_non_mapping_options(cfg: DictConfig, sources: ConfigSources) -> None:
    """An option whose YAML is a list or a single value (a slip in a user's own config folder):
    refused here, naming the file, rather than failing wherever its keys are read."""
    for group, choice in cfg.hydra.runtime.choices.items():
        if group == "hydra" or group.startswith("hydra/") or not isinstance(choice, str):
            continue
        try:
            node = OmegaConf.select(cfg, group.replace("/", "."))
        except OmegaConfBaseException:
            continue  # inside a node that is itself refused here
        if node is None or isinstance(node, DictConfig):
            continue
        files = [Path(d) / group / f"{choice}.yaml" for d in sources.dirs]
        where = next((str(f) for f in files if f.is_file()), f"{group}/{choice}.yaml")
        kind = "a list" if isinstance(node, ListConfig) else "a single value"
        raise UserError(f"{group}={choice} is not allowed: {where} holds {kind}, not a mapping of keys to values "
                        f"(an option sets its group's keys, one 'key: value' line each, as trainkit's configs/{group}/*.yaml do)")


def refuse_deleting_required(overrides: list[str], cfg: DictConfig, root_keys: tuple[str, ...] = ()) -> None:
    """Hydra's delete override (~logger, ~trainer.epochs) of something every run reads."""
    missing = missing_key(cfg, root_keys)
    if missing is None:
        return
    for override in overrides:
        key = override.split("=", 1)[0]
        if key.startswith("~") and (missing == key[1:] or missing.startswith(key[1:] + ".")):
            options = group_options(key[1:].replace(".", "/"))
            instead = (f"choose one of its options instead ({key[1:]}={', '.join(sorted(options))})" if options
                       else f"set its value instead ({missing}=...)")
            raise UserError(f"{override} is not allowed: every run reads {missing}; {instead}")


def yaml_error(error: yaml.YAMLError) -> str:
    """'<file>, line 4: not valid YAML: expected ',' or ']' ...' from PyYAML's multi-line report."""
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def unresolvable_key(node, path: str = "") -> str | None:
    """The first key whose interpolation fails (${oc.env:NOPE}): OmegaConf's error leaves it out."""
    for key in (range(len(node)) if isinstance(node, ListConfig) else node):
        child_path = f"{path}.{key}" if path else str(key)
        try:
            child = node[key]
        except OmegaConfBaseException:
            return child_path
        if isinstance(child, (DictConfig, ListConfig)):
            found = unresolvable_key(child, child_path)
            if found:
                return found
    return None


def check_buildable(cfg: DictConfig) -> None:
    """Build the cheap parts once (norm, activation, init, the model where the dataset config
    gives its sizes, the optimizer, the schedule), so that a value only their constructors can judge
    (model.hidden=[0], schedule.gamma=0) fails now, before a run folder or a data load.
    Each part is built and used on its own first, so that a failure names its own group."""
    import torch

    from trainkit.components.schedules import WARMUP_KEYS, build_schedule
    from trainkit.components.assembly import build_network
    from trainkit.components.optimizers import build_optimizer

    built = {group: building(group, lambda: instantiate(cfg[group]), cfg) for group in ("norm", "activation", "init")}
    building("activation", lambda: built["activation"](), cfg)  # what the model does for each layer
    sizes = {k: cfg.dataset.get(k) for k in ("in_channels", "image_size", "num_classes")}
    if sizes["num_classes"] is None:
        sizes["num_classes"] = 2  # counted from the data later (imagefolder); only the classifier's width depends on it
    if all(isinstance(v, int) for v in sizes.values()):
        spec = SimpleNamespace(**sizes)
        refuse_beyond_memory("dataset.image_size", spec.image_size, 2 * spec.in_channels * spec.image_size**2 * 4,
                             f"two {spec.image_size}x{spec.image_size}x{spec.in_channels} images as float32 (the smallest batch)")
        images = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
        network = building("model", lambda: build_network(cfg, spec, dropout=0.0), cfg)
        model = building("init", lambda: built["init"](network), cfg)
        # A forward pass too: torch modules take any argument and fail only when called.
        building("model", lambda: model(images), cfg)
    # The optimizer on a one-weight model: its own checks (lookahead's k and alpha, torch's) run now.
    building("optimizer", lambda: build_optimizer(cfg.optimizer, torch.nn.Linear(1, 1), cfg.regularization), cfg)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)  # the schedule's own checks need only an optimizer to hold
    # Without its warmup: whether a warmup of N steps fits depends on the real steps per epoch.
    main_schedule = OmegaConf.masked_copy(cfg.schedule, [k for k in cfg.schedule if k not in WARMUP_KEYS])
    building("schedule", lambda: build_schedule(main_schedule, optimizer, steps_per_epoch=1000,
                                                epochs=int(cfg.trainer.epochs), mode=resolve_mode(cfg.trainer.monitor, cfg.trainer.mode)),
             cfg)


BUILT_GROUPS = ("activation", "norm", "init", "model", "optimizer", "schedule")


def building(group: str, build, cfg: DictConfig):
    """Run `build` and return what it built; what it raises becomes one UserError naming the key
    when torch names the argument it rejects (activation.negative_slope='abc'), else the group."""
    try:
        return build()
    except Exception as e:
        found = user_error_in(e)
        if found is not None:
            raise found from None
        cause = e.__cause__ or e
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        # The whole reason on one line (Hydra's blocklist message spans three), without OmegaConf's key lines.
        first = " ".join(line for line in lines if not line.startswith(("full_key:", "object_type="))) or type(cause).__name__
        argument = re.search(r"argument '(\w+)'", first)
        for owner in BUILT_GROUPS if argument else ():
            if argument.group(1) in (cfg.get(owner) or {}):
                key = f"{owner}.{argument.group(1)}"
                raise allowed(key, OmegaConf.select(cfg, key), f"{type(cause).__name__}: {first}") from None
        raise UserError(f"{group}: these settings cannot be built: {type(cause).__name__}: {first}") from None


def check_sweep_direction(cfg: DictConfig) -> None:
    """An optimising sweeper must push the returned metric the way trainer.mode says is better."""
    direction = cfg.hydra.sweeper.get("direction")
    mode = resolve_mode(cfg.trainer.monitor, cfg.trainer.mode)
    wanted = {"max": "maximize", "min": "minimize"}.get(mode)
    if isinstance(direction, str) and wanted and direction != wanted:
        raise UserError(f"hydra.sweeper.direction={direction} is not allowed with trainer.mode={mode} "
                        f"(monitoring {cfg.trainer.monitor}): use hydra.sweeper.direction={wanted}")


def check_all(overrides: list[str], multirun: bool, sources: ConfigSources = ConfigSources(),
              shallow: bool = False) -> Composed:
    """Compose the plain overrides; in a sweep also each value of each swept key once. Returns
    the composed config of the plain overrides (a sweep's first values).

    `shallow` (--cfg, --info: a config is only shown): no import of a _target_, no build, no
    check of the output folders."""
    checks = {"signatures": not shallow, "build": not shallow}
    if not multirun:
        composed = compose_checked(overrides, sources, **checks)
        if not shallow:
            check_output_folder(composed, overrides)
        return composed
    parsed = parse(overrides)
    base = [o.input_line if not o.is_sweep_override() else first_value(o) for o in parsed]
    base = [b for b in base if b is not None]
    composed = compose_checked(base, sources, **checks)
    if not shallow:
        check_output_folder(composed, overrides, multirun=True)
    swept = [(i, o) for i, o in enumerate(parsed) if o.is_sweep_override()]
    # Sweeps an experiment or hparams_search config defines (hydra.sweeper.params) are checked too.
    swept += [(None, o) for o in parse([f"{k}={v}" for k, v in composed.sweep_params.items()])]
    for i, o in swept:
        if o.is_interval_sweep():
            continue  # a continuous range: nothing to enumerate
        for value in o.sweep_string_iterator():
            trial = [b for j, b in enumerate(base) if j != i] + [f"{o.get_key_element()}={value}"]
            compose_checked(trial, sources, **checks)
    return composed


def check_output_folder(composed: Composed, overrides: list[str], multirun: bool = False) -> None:
    """The folder Hydra will make for the run (or the sweep): one the user meant, not another run's
    (or sweep's), and one that can be made."""
    key, folder = ("hydra.sweep.dir", composed.sweep_dir) if multirun else ("hydra.run.dir", composed.run_dir)
    refuse_bad_output_folder(key, folder, composed.cfg, overrides)
    if multirun:
        refuse_used_sweep_dir(folder, composed.sweeper)
    else:
        refuse_used_run_dir(folder)
    refuse_unwritable(key, folder)


def refuse_bad_output_folder(key: str, folder: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The output folder is one the user meant and the file system can make: an empty value (an
    unset shell variable) is not the launch folder, task_name is a name and not a path, and no
    folder name is longer than the file system allows (checked now: later it is a traceback)."""
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    if given and given[-1].strip() in ("", "''", '""'):
        raise UserError(f"{key}='' is not allowed: an empty folder puts the run's files into the folder trainkit was "
                        f"started in; name a folder, or leave {key} out for a new one under {cfg.paths.output_root}")
    task_name = str(cfg.task_name)
    if "/" in task_name:
        raise allowed("task_name", task_name, "it is part of the run folder's name (<time>_<task_name>), so it cannot "
                                              "hold '/' (it would put the run elsewhere); use a plain name such as my_run")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if exists(p))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for name in folder.absolute().relative_to(existing).parts:
        size = len(os.fsencode(name))
        if size <= limit:
            continue
        if task_name and task_name in name:
            raise UserError(f"task_name={shortened(task_name)!r} ({len(task_name)} characters) is not allowed: the run "
                            f"folder's name it makes is {size} bytes and the file system allows {limit}; use a shorter task_name")
        raise UserError(f"{key}={shortened(str(folder))!r} is not allowed: its folder name {shortened(name)!r} is {size} "
                        f"bytes and the file system allows {limit}")


def exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long even to look up
        return False


def shortened(text: str, keep: int = 24) -> str:
    return text if len(text) <= keep + 1 else text[:keep] + "…"


def hydra_quoted(value: str, literal: bool = True) -> str:
    """`value` as a quoted string in Hydra's override grammar, which reads it back unchanged: a
    backslash is special only before a quote (or at the end, before the closing quote). `literal`
    (a path trainkit hands on): a `${` is escaped too, so OmegaConf keeps it as text; otherwise (a
    value the user typed, in a quoting hint) a `${...}` stays the interpolation the user wrote."""
    if literal:
        value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)  # OmegaConf: \${ is a literal ${
    escaped = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), value)
    return f'"{escaped}"'


def hydra_value(value: str) -> str:
    """`value` as Hydra reads it back: as it is where the grammar takes it so, else quoted."""
    try:
        if OverridesParser.create().parse_override(f"k={value}").value() == value:
            return value
    except Exception:  # the grammar's own errors (HydraException, antlr's)
        pass
    return hydra_quoted(value, literal=False)


def parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
        return True
    except OverrideParseException:
        return False


def quoting_hint(e: OverrideParseException, overrides: list[str]) -> str | None:
    """'dataset.root=my dir: Hydra cannot read ...; write it as ...' for a value that the grammar
    reads only quoted, or that the shell split at a space (dataset.root=my dir, unquoted)."""
    override = stray = getattr(e, "override", None) or ""
    if "=" not in stray and stray in overrides:  # a word without '=': perhaps the rest of the value before it
        start = end = overrides.index(stray)
        while start > 0 and "=" not in overrides[start]:
            start -= 1
        while end + 1 < len(overrides) and "=" not in overrides[end + 1]:
            end += 1
        override = " ".join(overrides[start:end + 1])
    key, sep, value = override.partition("=")
    if not sep or not value.strip() or not key.strip():
        return None
    quoted = f"{key}={hydra_quoted(value, literal=False)}"
    if not parses(quoted):
        return None
    if stray != override:
        return (f"{stray}: not an override (key=value); if it is the rest of a value with a space in it, quote the "
                f"value: {shlex.quote(quoted)}")
    if any(c.isspace() for c in value) or not value.isascii():
        what = "spaces or non-ASCII characters"
    else:
        unread = [c for c in dict.fromkeys(value) if not parses(f"{key}=a{c}b")]
        what = " or ".join(f"'{c}'" for c in unread) if unread else "this value"
    return f"{override}: Hydra cannot read {what} unquoted; write it as {shlex.quote(quoted)}"


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


def group_options(group: str) -> list[str]:
    """The options of a config group, on the search path Hydra is composing with now."""
    try:
        return GlobalHydra.instance().config_loader().get_group_options(group)
    except Exception:  # no Hydra context: the message then just names the missing option
        return []


def keyed_cause(e: BaseException) -> BaseException | None:
    """The OmegaConf error behind Hydra's, which carries the key (full_key, key, value)."""
    while e is not None:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            return e
        e = e.__cause__
    return None


def one_line(e: Exception, overrides: list[str], options_of=lambda group: []) -> str:
    """Hydra's multi-line errors, shortened to what the user needs: the key, the value, the choices."""
    text = str(e)
    if isinstance(e, MissingMandatoryValue):
        key = e.full_key or "?"
        return f"{key} is required: set it on the command line ({key}=...) or in your config"
    if isinstance(e, MissingConfigException) or re.search(r"Could not (find|load) '", text):
        # 'find' for a plain option (Hydra lists the choices), 'load' for one inside a list: regularization=[l2,dropot]
        m = re.search(r"Could not (?:find|load) '([^']+)'", text)
        missing = m.group(1) if m else "?"
        group, _, option = missing.rpartition("/")
        options = getattr(e, "options", None) or re.findall(r"^\t(\S+)$", text, flags=re.M) or options_of(group)
        if group and options:
            return f"{group}={option} is not allowed: the {group} options are {', '.join(sorted(options))}"
        primary = re.search(r"Cannot find primary config '([^']+)'", text)
        if primary:
            return f"--config-name={primary.group(1)} is not allowed: there is no {primary.group(1)}.yaml in trainkit's configs or --config-dir"
        return f"{missing}: no such config"
    cause = keyed_cause(e)
    if isinstance(cause, ValidationError) and is_dataclass(cause.object_type):
        # a value of the wrong type for a schema field: the field's rule says what is allowed
        check = rule_of(cause.object_type, cause.key)
        return str(allowed(cause.full_key, cause.value, describe(check) if check else str(cause).splitlines()[0]))
    if isinstance(cause, ConfigTypeError) and is_dataclass(cause.object_type) and f"~{cause.full_key}" in overrides:
        return (f"~{cause.full_key} is not allowed: every run reads {cause.full_key}; set its value instead "
                f"({cause.full_key}=...)")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        full_key = cause.full_key
        given = next((o for o in overrides if o.split("=")[0].lstrip("+~") == full_key), full_key)
        parent, _, leaf = full_key.rpartition(".")
        node = cause.parent_node
        siblings = list(node) if isinstance(node, DictConfig) and parent else []
        message = f"{given}: there is no key '{full_key}' in the config{did_you_mean(leaf, siblings)}"
        if siblings:
            message += f"; {parent} takes {', '.join(sorted(s for s in siblings if not s.startswith('_')))}"
        if "_target_" in siblings:
            message += f" (+{full_key}=... adds an argument its _target_ accepts)"
        return message
    if isinstance(e, OverrideParseException):
        hint = quoting_hint(e, overrides)
        if hint:
            return hint
        if "=" not in (e.override or "="):
            return f"{e.override}: not an override; write key=value (trainer.epochs=5) or group=option (optimizer=sgd)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    key = re.search(r"full_key: (\S+)", text)
    return f"{key.group(1)}: {first}" if key and key.group(1) not in first else first
