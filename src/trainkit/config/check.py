"""Reject a bad config before training starts: unknown keys, wrong types, values out of range.

Hydra already refuses command-line overrides of keys that do not exist; this check also
covers keys written in YAML files (a user's own config folder), types and ranges. Each
problem is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import math
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainkit.errors import UserError, allowed
from trainkit.metrics import MODES, MONITORABLE, natural_mode


def positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def norm_order(v) -> bool:
    """A p-norm's p: a number > 0, or inf (a float from the command line, the string 'inf' in YAML)."""
    return v == "inf" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and not math.isnan(v))


norm_order.what = "a number > 0, or inf (the largest element)"


def whole_at_least(n):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= n


def fraction_open(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def in_unit_interval_half_open(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


probability.what = "a number in [0, 1]"


def non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v)


def one_of(*choices):
    check = lambda v: any(v == c and type(v) is type(c) for c in choices)  # noqa: E731  (1 is not True)
    check.what = ", ".join(map(as_yaml, choices))
    return check


def as_yaml(value) -> str:
    """A choice as the user writes it: true, false, null."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def optional(check):
    wrapped = lambda v: v is None or check(v)  # noqa: E731
    wrapped.what = f"null or {describe(check)}"
    return wrapped


def describe(check) -> str:
    return getattr(check, "what", None) or {
        positive: "a number > 0", fraction_open: "a number strictly between 0 and 1",
        in_unit_interval_half_open: "a number in [0, 1)", non_negative: "a number >= 0",
    }.get(check, "see the YAML comments")


def device_name(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None


device_name.what = "auto, cpu, cuda, cuda:N or mps"


def precision(v) -> bool:
    return str(v) in ("auto", "32", "bf16", "16")


precision.what = "auto, 32, bf16 or 16"


def whole(n):
    check = whole_at_least(n)
    check.what = f"a whole number >= {n}"
    return check


def pixel_means(v) -> bool:
    return per_channel(v) and all(0 <= x <= 1 for x in v)


def pixel_stds(v) -> bool:  # a zero std divides by zero: the run would only diverge later
    return per_channel(v) and all(0 < x <= 1 for x in v)


def per_channel(v) -> bool:
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


pixel_means.what = "one number in [0, 1] per channel, for pixels scaled to [0, 1]"
pixel_stds.what = "one number in (0, 1] per channel, for pixels scaled to [0, 1]"
# The loaders seed each epoch's torch generator with seed * 1_000_003 + epoch (loaders.epoch_generator),
# and torch takes seeds below 2**64: the largest seed that leaves room for a million epochs.
SEED_MAX = (2**64 - 1 - 10**6) // 1_000_003


def seed(v) -> bool:
    return whole_at_least(0)(v) and v <= SEED_MAX


seed.what = f"a whole number from 0 to {SEED_MAX} (torch's 64-bit seed holds seed x 1000003 + epoch)"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes
# Known keys of the groups that have no _target_, with a rule where a value can be wrong.
SCHEMAS: dict[str, dict[str, Any]] = {
    "trainer": {
        "epochs": whole(1), "batch_size": whole(1), "eval_batch_size": whole(1), "device": device_name,
        "precision": precision, "seed": seed,
        "monitor": one_of(*MONITORABLE), "mode": one_of(*MODES), "on_nan": one_of("stop", "skip"),
        "log_every_n_steps": whole(1), "limit_train_batches": optional(whole(1)),
        "limit_val_batches": optional(whole(1)), "limit_test_batches": optional(whole(1)), "progress": one_of("auto", True, False),
        "overfit_batches": optional(whole(1)), "fast_dev_run": one_of(True, False),
        "accumulate_grad_batches": whole(1), "channels_last": one_of(True, False), "compile": one_of(True, False),
        "compile_mode": one_of(*COMPILE_MODES), "cudnn_benchmark": one_of(True, False),
        "pin_memory": one_of("auto", True, False), "threads": optional(whole(1)),
    },
    "dataset": {
        "name": None, "root": None, "data_dir": None, "download": one_of(True, False),
        "val_fraction": fraction_open, "test_fraction": fraction_open, "in_channels": optional(one_of(1, 3)),
        "image_size": optional(whole(1)), "num_classes": optional(whole(2)), "class_names": None,
        "mean": optional(pixel_means), "std": optional(pixel_stds), "preprocess": one_of("standardize", "center", "none", "zca"),
        "loader": one_of("auto", "device", "workers"), "workers": None,
        "class_weights": one_of(None, "auto"), "balanced_sampler": one_of(True, False), "cache_dir": None,
        "zca_epsilon": positive, "resize": one_of("center_crop", "stretch"), "split_seed": whole(0),
    },
    "augmentation": {"train": None, "eval": None},
    "logger": {"tensorboard": None},
    "logger.tensorboard": {"enabled": one_of(True, False), "image_grid": whole(0)},
    "paths": {"data_dir": None, "output_root": None, "cache_dir": None},
}
# The top level of train.yaml: its groups and its own two keys.
ROOT_KEYS = ("task_name", "resume", "dataset", "augmentation", "model", "norm", "activation", "init", "trainer",
             "schedule", "optimizer", "regularization", "logger", "paths")
# Nodes whose every key the run reads (a dataset's keys depend on the dataset).
FULLY_READ = ("trainer", "logger.tensorboard", "paths")


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
        for key in SCHEMAS[path] if isinstance(node, DictConfig) else ():
            if key not in node:
                return f"{path}.{key}"
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" not in node:
            return f"{group}._target_"
    return None


def shown(node: DictConfig, key: str) -> str:
    """The value at node[key] for a message: its repr, cut short; an unresolvable one as written."""
    try:
        value = node.get(key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException:
        value = "?"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(key: str, choices) -> str:
    """' (did you mean epochs?)' for a near miss, else ''."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def widths(v) -> bool:
    return OmegaConf.is_list(v) and all(whole_at_least(1)(w) for w in v)


widths.what = "a list of whole numbers >= 1 (one width per layer)"


def fraction_up_to_one(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


fraction_up_to_one.what = "a number in (0, 1]"


def beta_pair(v) -> bool:
    return OmegaConf.is_list(v) and len(v) == 2 and all(in_unit_interval_half_open(b) for b in v)


beta_pair.what = "two numbers in [0, 1): [beta1, beta2], the decay rates of the gradient's running mean and square"

# Range rules for keys inside _target_ nodes (their key names come from the target's signature).
TARGET_RULES: dict[str, dict[str, Any]] = {
    "optimizer": {"lr": positive, "momentum": in_unit_interval_half_open, "weight_decay": non_negative, "k": whole(1),
                  "betas": beta_pair},
    "model": {"depth": whole(1), "width": whole(1), "hidden": widths, "channels": widths},
    "norm": {"num_groups": whole(1)},
}
# Rules for a key whose meaning depends on the target: RMSprop's alpha is a decay rate, Lookahead's a step size.
RULES_BY_TARGET: dict[str, dict[str, Any]] = {
    "torch.optim.RMSprop": {"alpha": in_unit_interval_half_open},
    "trainkit.components.lookahead.lookahead": {"alpha": fraction_up_to_one},
    "trainkit.components.muon.MuonWithAdamW": {"adamw_lr": positive, "adamw_betas": beta_pair, "ns_steps": whole(1),
                                               "adjust_lr_fn": one_of(None, "original", "match_rms_adamw", "spectral_unclamped")},
}

REGULARIZATION_RULES: dict[str, dict[str, Any]] = {
    "dropout": {"p": in_unit_interval_half_open},
    "l2": {"weight_decay": non_negative, "coupling": one_of("optimizer", "loss")},
    "label_smoothing": {"epsilon": in_unit_interval_half_open},
    "l1": {"weight": non_negative},
    "elastic_net": {"l1": non_negative, "beta": non_negative},
    "mixup": {"alpha": positive},
    "cutmix": {"alpha": positive, "switch_prob": probability},
    "early_stopping": {"monitor": one_of(*MONITORABLE), "mode": one_of(*MODES), "patience": whole(1),
                       "min_delta": non_negative},
    "grad_clip": {"by": one_of("norm", "value"), "max_norm": positive, "value": positive, "norm_type": norm_order},
}


def check_config(cfg: DictConfig, own_root_keys: tuple[str, ...] = (), signatures: bool = True) -> None:
    """Raise one UserError for the first problem found; silent for a good config.

    `own_root_keys`: top-level keys a command adds to train.yaml (preview's out and n).
    The checks that need no import come first; `signatures=False` skips those that import each
    _target_ to read its signature (torch, albumentations): printing a config needs none of them."""
    missing = missing_key(cfg, own_root_keys)
    if missing is not None:
        raise UserError(f"{missing} is required: set it on the command line ({missing}=...) or in your config")
    for key in cfg:
        if key not in ROOT_KEYS and key not in own_root_keys:
            raise UserError(f"{key}={shown(cfg, key)}: unknown top-level key{did_you_mean(key, ROOT_KEYS + own_root_keys)}; the "
                            f"config's top level holds {', '.join(ROOT_KEYS + own_root_keys)}")
    for group, schema in SCHEMAS.items():
        node = OmegaConf.select(cfg, group)
        if not isinstance(node, DictConfig):
            continue
        for key in node:
            if key not in schema:
                raise UserError(f"{group}.{key}={shown(node, key)}: unknown key{did_you_mean(key, schema)}; "
                                f"{group} takes {', '.join(sorted(schema))}")
            rule = schema[key]
            value = node.get(key)
            if rule is not None and not rule(value):
                raise allowed(f"{group}.{key}", value, describe(rule))
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            check_target_values(group, node, TARGET_RULES.get(group, {}))
    for name, node in (cfg.get("regularization") or {}).items():
        rules = REGULARIZATION_RULES.get(name, {})
        if not isinstance(node, DictConfig):
            continue
        for key, rule in rules.items():
            if key in node and not rule(node[key]):
                raise allowed(f"regularization.{name}.{key}", node[key], describe(rule))
    check_mode_fits_monitor(cfg)
    check_warmup_ends_before_the_run(cfg)
    check_lbfgs_is_noise_free(cfg)
    dataset = cfg.get("dataset") or {}
    check_channel_stats(dataset)
    if dataset.get("balanced_sampler") and dataset.get("class_weights") == "auto":
        raise UserError("dataset.balanced_sampler=true with dataset.class_weights=auto corrects the class imbalance twice "
                        "(rare classes would then outweigh common ones); choose one of them")
    if signatures:
        check_target_signatures(cfg)


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


def check_warmup_ends_before_the_run(cfg: DictConfig) -> None:
    warmup, epochs = OmegaConf.select(cfg, "schedule.warmup_epochs"), OmegaConf.select(cfg, "trainer.epochs")
    if isinstance(warmup, (int, float)) and isinstance(epochs, int) and warmup >= epochs:
        raise allowed("schedule.warmup_epochs", warmup, f"fewer epochs than the run's trainer.epochs={epochs}: "
                      "the warmup must end before the run does")


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
# an optimizer's exclude_bias_and_norm (components/optimizers.py), a schedule's warmup (components/schedules.py).
OWN_KEYS = {"optimizer": ("exclude_bias_and_norm",), "schedule": ("warmup_epochs", "warmup_steps", "warmup_start_factor")}


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


HASH_IGNORED = ("resume", "paths", "task_name")
HASH_IGNORED_DATASET = ("data_dir", "cache_dir", "workers", "download")  # where data lives, not what is trained


def config_hash(cfg: DictConfig) -> str:
    """Identifies 'the same config' for resume=auto: everything but paths, resume and display knobs."""
    from trainkit.config.targets import first_spelling_targets

    # Targets as first written: a module's move (config/targets.py) does not change the hash.
    container = first_spelling_targets(OmegaConf.to_container(cfg, resolve=True))
    for key in HASH_IGNORED:
        container.pop(key, None)
    container.get("trainer", {}).pop("progress", None)
    for key in HASH_IGNORED_DATASET:
        container.get("dataset", {}).pop(key, None)
    return hashlib.sha1(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]
