"""Reject a bad config before training starts: unknown keys, wrong types, values out of range.

The plain groups (trainer, dataset, logger, paths, augmentation, each regularization entry and
the top level) have their schema in config/schema.py, each field with its rule; Hydra already
refuses a wrong type or an unknown key there while composing, and `check_config` applies the
rules (and refuses keys added with `+`, which Hydra lets through). The groups with a `_target_`
are checked against their target's signature here; their values are checked by their own
constructors, which the pre-run check calls (cli/preflight.py: check_buildable). Only the torch
optimizers' arguments, whose classes trainkit does not own, have their rules here (TARGET_RULES).
Rules that relate several keys follow. Each problem is one line naming the key, the value and
what is allowed.

A new plain key or group: see config/schema.py. A new `_target_` group: add it to TARGET_GROUPS
(its keys are then checked against its target's signature) and to BUILT_GROUPS in
cli/preflight.py with a line in check_buildable that builds it, so its constructor's checks run
before the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainkit.config.rules import (beta_pair, describe, did_you_mean, in_unit_interval_half_open, non_negative, positive,
                                   shown, validated, whole, widths)
from trainkit.config.schema import CALLBACKS, REGULARIZATION, ROOT_KEYS, SCHEMAS, schema_of
from trainkit.errors import UserError, allowed
from trainkit.metrics import MONITORABLE, natural_mode

# Top-level keys a config may leave out (one written before they existed).
OPTIONAL_ROOT_KEYS = ("callbacks", "finetune")

# Nodes whose every key the run reads (a dataset's keys depend on the dataset).
FULLY_READ = ("trainer", "logger.tensorboard", "paths", "diagnostics", "diagnostics.lr_find")


def missing_key(cfg: DictConfig, own_root_keys: tuple[str, ...] = ()) -> str | None:
    """The first key every run reads that the config lacks (after ~logger, or from an option
    file written without it), or None."""
    for key in ROOT_KEYS + own_root_keys:
        if key not in cfg:
            return key
    for path in FULLY_READ:
        parent, _, leaf = path.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf not in node:
            return path
        node = OmegaConf.select(cfg, path)
        for key in fields_of(path) if isinstance(node, DictConfig) else ():
            if key not in node:
                return f"{path}.{key}"
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" not in node:
            return f"{group}._target_"
    return None


# Our rules for arguments of torch's optimizers (torch's own checks come later and say less).
# trainkit's own targets (lookahead's k and alpha, norm.num_groups, model.depth) check their
# arguments in their constructors, which the pre-run check calls.
TARGET_RULES: dict[str, dict[str, Any]] = {
    "optimizer": {"lr": positive, "momentum": in_unit_interval_half_open, "weight_decay": non_negative, "betas": beta_pair},
    "model": {"hidden": widths, "channels": widths, "widths": widths},
}
# Rules for a key whose meaning depends on the target: RMSprop's alpha is a decay rate.
RULES_BY_TARGET: dict[str, dict[str, Any]] = {
    "torch.optim.RMSprop": {"alpha": in_unit_interval_half_open},
    "trainkit.components.airbench.AirbenchNet": {"whiten_kernel": whole(1), "whiten_samples": whole(1),
                                                 "whiten_epsilon": positive, "stem_width": whole(1), "logit_scale": positive},
}


def fields_of(path: str) -> list[str]:
    """The keys of a plain group's schema (logger.tensorboard: of its nested schema)."""
    group, _, inner = path.partition(".")
    schema = SCHEMAS[group]
    for name in filter(None, inner.split(".")):
        schema = next(f.metadata["schema"] for f in dataclasses.fields(schema) if f.name == name)
    return [f.name for f in dataclasses.fields(schema)]


def check_sync_bn_has_batch_norm(cfg: DictConfig) -> None:
    """SyncBatchNorm replaces BatchNorm layers: with any other norm there is nothing to synchronise."""
    kind = OmegaConf.select(cfg, "norm.kind")
    if OmegaConf.select(cfg, "trainer.sync_bn") is True and kind != "batch":
        raise UserError(f"trainer.sync_bn=true is not allowed with norm={kind}: it turns BatchNorm layers into "
                        "SyncBatchNorm; use norm=batch, or trainer.sync_bn=false")


def check_config(cfg: DictConfig, own_root_keys: tuple[str, ...] = (), signatures: bool = True) -> None:
    """Raise one UserError for the first problem found; silent for a good config.

    `own_root_keys`: top-level keys a command adds to train.yaml (preview's out and n).
    The checks that need no import come first; `signatures=False` skips those that import each
    _target_ to read its signature (torch, albumentations): printing a config needs none of them."""
    missing = missing_key(cfg, own_root_keys)
    if missing is not None:
        raise UserError(f"{missing} is required: set it on the command line ({missing}=...) or in your config")
    for key in cfg:
        if key not in ROOT_KEYS and key not in own_root_keys and key not in OPTIONAL_ROOT_KEYS:
            raise UserError(f"{key}={shown(cfg, key)}: unknown top-level key{did_you_mean(key, ROOT_KEYS + own_root_keys)}; the "
                            f"config's top level holds {', '.join(ROOT_KEYS + own_root_keys)}")
    for group in SCHEMAS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            validated(schema_of(node, group), node, group)
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            check_target_values(group, node, TARGET_RULES.get(group, {}))
    for name, node in (cfg.get("regularization") or {}).items():
        if name not in REGULARIZATION:
            raise allowed("regularization", name, ", ".join(REGULARIZATION))
        if isinstance(node, DictConfig):
            validated(REGULARIZATION[name], node, f"regularization.{name}")
    for name, node in (cfg.get("callbacks") or {}).items():
        if name not in CALLBACKS:
            raise allowed("callbacks", name, ", ".join(CALLBACKS))
        if isinstance(node, DictConfig):
            validated(CALLBACKS[name], node, f"callbacks.{name}")
    check_snapshots_have_cycles(cfg)
    check_mode_fits_monitor(cfg)
    check_warmup_ends_before_the_run(cfg)
    check_swa_starts_within_the_run(cfg)
    check_lbfgs_is_noise_free(cfg)
    check_lr_range(cfg)
    check_sync_bn_has_batch_norm(cfg)
    dataset = cfg.get("dataset") or {}
    check_channel_stats(dataset)
    if dataset.get("balanced_sampler") and dataset.get("class_weights") == "auto":
        raise UserError("dataset.balanced_sampler=true with dataset.class_weights=auto corrects the class imbalance twice "
                        "(rare classes would then outweigh common ones); choose one of them")
    if signatures:
        check_target_signatures(cfg)


def check_lr_range(cfg: DictConfig) -> None:
    """The LR range test sweeps upwards: start below end, and a low threshold below the high one."""
    lr_find = OmegaConf.select(cfg, "diagnostics.lr_find")
    if isinstance(lr_find, DictConfig) and not lr_find.start_lr < lr_find.end_lr:
        raise UserError(f"diagnostics.lr_find.start_lr={lr_find.start_lr} is not allowed with "
                        f"diagnostics.lr_find.end_lr={lr_find.end_lr}: the range test grows the LR, so start_lr must be "
                        "below end_lr (1e-7 and 10 by default)")
    node = cfg.get("diagnostics")
    if isinstance(node, DictConfig) and not node.update_ratio_low < node.update_ratio_high:
        raise UserError(f"diagnostics.update_ratio_low={node.update_ratio_low} is not allowed with "
                        f"diagnostics.update_ratio_high={node.update_ratio_high}: low must be below high")


TARGET_GROUPS = ("optimizer", "schedule", "model", "norm", "activation", "init")


def check_target_signatures(cfg: DictConfig) -> None:
    """Every key of each _target_ node is an argument its target accepts (this imports the targets)."""
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            check_target_node(group, node, extra_keys(group))
    for split in ("train", "eval"):
        for i, transform in enumerate((cfg.get("augmentation") or {}).get(split) or []):
            if isinstance(transform, DictConfig):
                check_target_node(f"augmentation.{split}[{i}]", transform)


def check_channel_stats(dataset) -> None:
    """dataset.mean and dataset.std: both given, one value per channel, or both null (computed)."""
    mean, std, channels = dataset.get("mean"), dataset.get("std"), dataset.get("in_channels")
    if (mean is None) != (std is None):
        missing, given = ("mean", "std") if mean is None else ("std", "mean")
        raise UserError(f"dataset.{missing}=null is not allowed with dataset.{given}={shown(dataset, given)}: give both, "
                        "or leave both null to compute them from the training images")
    for key in ("mean", "std"):
        values = dataset.get(key)
        if values is not None and isinstance(channels, int) and len(values) != channels:
            raise allowed(f"dataset.{key}", values,
                          f"{channels} value{'s' * (channels > 1)}, one per channel (dataset.in_channels={channels})")


def check_snapshots_have_cycles(cfg: DictConfig) -> None:
    """callbacks=[snapshots] without every_n_epochs saves at the restarts of cosine_restarts: there must be some."""
    snapshots = (cfg.get("callbacks") or {}).get("snapshots")
    target = str((cfg.get("schedule") or {}).get("_target_", ""))
    if snapshots is not None and snapshots.get("every_n_epochs") is None and not target.endswith(".cosine_restarts"):
        raise UserError("callbacks.snapshots.every_n_epochs=null saves a snapshot at the end of each cosine_restarts "
                        "cycle, and this run's schedule has no restarts: add schedule=cosine_restarts, or set "
                        "callbacks.snapshots.every_n_epochs=N")


def check_warmup_ends_before_the_run(cfg: DictConfig) -> None:
    warmup, epochs = OmegaConf.select(cfg, "schedule.warmup_epochs"), OmegaConf.select(cfg, "trainer.epochs")
    if isinstance(warmup, (int, float)) and isinstance(epochs, int) and warmup >= epochs:
        raise allowed("schedule.warmup_epochs", warmup, f"fewer epochs than the run's trainer.epochs={epochs}: "
                      "the warmup must end before the run does")


def check_swa_starts_within_the_run(cfg: DictConfig) -> None:
    start, epochs = OmegaConf.select(cfg, "regularization.swa.start"), OmegaConf.select(cfg, "trainer.epochs")
    if isinstance(start, int) and not isinstance(start, bool) and isinstance(epochs, int) and start > epochs:
        raise allowed("regularization.swa.start", start, f"an epoch of the run (1 .. trainer.epochs={epochs}), "
                      "or a fraction of it such as 0.75")


def check_mode_fits_monitor(cfg: DictConfig) -> None:
    """Maximising a loss or minimising an accuracy is always a slip, and a silent one: the
    worst epoch would become best.pt and early stopping would stop on improvement."""
    pairs = [("trainer", OmegaConf.select(cfg, "trainer.monitor"), OmegaConf.select(cfg, "trainer.mode"))]
    stopping = OmegaConf.select(cfg, "regularization.early_stopping")
    if isinstance(stopping, DictConfig):
        pairs.append(("regularization.early_stopping", stopping.get("monitor"), stopping.get("mode")))
    for path, monitor, mode in pairs:
        if monitor in MONITORABLE and mode in ("max", "min") and mode != natural_mode(monitor):
            raise UserError(f"{path}.mode={mode!r} is not allowed with {path}.monitor={monitor!r}: "
                            f"{'a loss improves downwards' if natural_mode(monitor) == 'min' else 'an accuracy improves upwards'}; "
                            f"use {natural_mode(monitor)} or auto")


# Keys of a group's config that trainkit reads itself instead of passing to the group's target:
# an optimizer's exclude_bias_and_norm (components/optimizers.py), a schedule's warmup (components/schedules.py),
# a model's source of pretrained weights (components/pretrained.py).
OWN_KEYS = {"optimizer": ("exclude_bias_and_norm",), "schedule": ("warmup_epochs", "warmup_steps", "warmup_start_factor"),
            "model": ("weights", "weights_path", "from_run")}


def extra_keys(group: str) -> set[str]:
    """Keys the run consumes itself before calling the group's target."""
    return set(OWN_KEYS.get(group, ()))


LBFGS = "torch.optim.LBFGS"
NOISE_SOURCES = ("dropout", "mixup", "cutmix", "grad_clip")


def check_lbfgs_is_noise_free(cfg: DictConfig) -> None:
    """L-BFGS's line search assumes the same loss at every evaluation of a step, and its curvature
    pairs assume that only its own steps move the weights: no noise sources, no wrapper."""
    optimizer = cfg.get("optimizer") or {}
    if OmegaConf.select(optimizer, "base._target_") == LBFGS:
        raise UserError("optimizer/base=lbfgs is not allowed: a wrapper (lookahead, ranger) moves the weights between "
                        "L-BFGS steps, which corrupts the curvature pairs L-BFGS keeps; use optimizer=lbfgs on its own")
    if optimizer.get("_target_") != LBFGS:
        return
    for name in NOISE_SOURCES:
        if name in (cfg.get("regularization") or {}):
            raise UserError(f"regularization={name} is not allowed with optimizer=lbfgs: its line search needs the same loss "
                            "at every evaluation; drop it (l2, l1, elastic_net and label_smoothing are fine)")
    if (cfg.get("augmentation") or {}).get("train"):
        raise UserError("augmentation.train is not allowed with optimizer=lbfgs: augmentation makes the full-batch loss "
                        "random; use augmentation=none")
    if OmegaConf.select(cfg, "trainer.on_nan") == "skip":
        raise UserError("trainer.on_nan=skip is not allowed with optimizer=lbfgs: use trainer.on_nan=stop")
    if OmegaConf.select(cfg, "dataset.balanced_sampler"):
        raise UserError("dataset.balanced_sampler=true is not allowed with optimizer=lbfgs: resampling the full batch "
                        "every epoch changes the objective under L-BFGS; use dataset.class_weights=auto instead")


def target_arguments(node: DictConfig) -> tuple[dict[str, Any], dict[str, DictConfig]]:
    """A _target_ node's own arguments, and the _target_ nodes nested in it (lookahead's base), by key."""
    own, nested = {}, {}
    for key in node:
        if key.startswith("_") and key.endswith("_"):
            continue
        value = node.get(key)
        (nested if isinstance(value, DictConfig) and "_target_" in value else own)[key] = value
    return own, nested


def check_target_values(path: str, node: DictConfig, rules: dict) -> None:
    """The range rules of a _target_ node's keys (and of a nested one's: lookahead's base); no import."""
    own, nested = target_arguments(node)
    for key, value in own.items():
        rule = RULES_BY_TARGET.get(str(node.get("_target_")), {}).get(key) or rules.get(key)
        if rule is not None and not rule(value):
            raise allowed(f"{path}.{key}", value, describe(rule))
    for key, value in nested.items():
        check_target_values(f"{path}.{key}", value, rules)


def check_target_node(path: str, node: DictConfig, extra: set[str] = frozenset()) -> None:
    """Every key of a _target_ node must be an argument its target accepts."""
    target = node.get("_target_")
    if target is None:
        return
    obj = locate(target)
    if obj is None:
        raise allowed(f"{path}._target_", target, "an importable class or function")
    accepted, takes_kwargs = signature_keys(obj)
    own, nested = target_arguments(node)
    for key in own:
        if key not in accepted and key not in extra and not takes_kwargs:
            raise UserError(f"{path}.{key}={shown(node, key)}: unknown key for {target}"
                            f"{did_you_mean(key, accepted | extra)}; allowed: {', '.join(sorted(accepted | extra))}")
    for key, value in nested.items():
        check_target_node(f"{path}.{key}", value, extra)


def locate(dotted: str):
    """The object at a dotted path, or None: its longest importable module, then attributes (a
    class's nested class too). Quietly: Hydra's get_object logs its failures."""
    parts = str(dotted).split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
            break
        except ImportError:
            continue
        except ValueError:  # an empty name
            return None
    else:
        return None
    for part in parts[end:]:
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


SUPPLIED_BY_RUN = {"self", "params", "optimizer", "horizon", "in_channels", "image_size", "num_classes", "norm",
                   "activation", "dropout", "args", "kwargs"}


def signature_keys(obj) -> tuple[set[str], bool]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names - SUPPLIED_BY_RUN, takes_kwargs


HASH_IGNORED = ("resume", "paths", "task_name", "checkpoint")  # checkpoint: what is kept, not what is trained
HASH_IGNORED_DATASET = ("data_dir", "cache_dir", "workers", "download")  # where data lives, not what is trained
# Keys added after runs were recorded: left out of the hash while null, so those runs keep theirs.
HASH_IGNORED_WHEN_NULL = {"dataset": ("train_subset",), "model": OWN_KEYS["model"]}


def config_hash(cfg: DictConfig) -> str:
    """Identifies 'the same config' for resume=auto: everything but paths, resume and display knobs."""
    from trainkit.config.targets import first_spelling_targets

    # Targets as first written: a module's move (config/targets.py) does not change the hash.
    container = first_spelling_targets(OmegaConf.to_container(cfg, resolve=True))
    for key in HASH_IGNORED:
        container.pop(key, None)
    for key in ("callbacks", "finetune"):  # none picked: the hash of a config written before the group existed
        if not container.get(key):
            container.pop(key, None)
    container.get("trainer", {}).pop("progress", None)
    for key in HASH_IGNORED_DATASET:
        container.get("dataset", {}).pop(key, None)
    for group, keys in HASH_IGNORED_WHEN_NULL.items():
        node = container.get(group) or {}
        for key in keys:
            if key in node and node[key] is None:
                node.pop(key)
    return hashlib.sha1(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]
