"""Reject a bad config before training starts: unknown keys, wrong types, values out of range.

Hydra already refuses command-line overrides of keys that do not exist; this check also
covers keys written in YAML files (a user's own config folder), types and ranges. Each
problem is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainkit.errors import UserError, allowed
from trainkit.metrics import MONITORABLE
from trainkit.schedules import WARMUP_KEYS


def positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


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
    check = lambda v: v in choices  # noqa: E731
    check.what = ", ".join(map(str, choices))
    return check


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


# Known keys of the groups that have no _target_, with a rule where a value can be wrong.
SCHEMAS: dict[str, dict[str, Any]] = {
    "trainer": {
        "epochs": whole(1), "batch_size": whole(1), "eval_batch_size": whole(1), "device": device_name,
        "precision": precision, "seed": whole(0),
        "monitor": one_of(*MONITORABLE), "mode": one_of("max", "min"), "on_nan": one_of("stop", "skip"),
        "log_every_n_steps": whole(1), "limit_train_batches": optional(whole(1)),
        "limit_val_batches": optional(whole(1)), "progress": one_of("auto", True, False),
    },
    "dataset": {
        "name": None, "root": None, "data_dir": None, "download": one_of(True, False),
        "val_fraction": fraction_open, "test_fraction": fraction_open, "in_channels": optional(one_of(1, 3)),
        "image_size": optional(whole(1)), "num_classes": optional(whole(2)), "class_names": None,
        "mean": None, "std": None, "preprocess": one_of("standardize", "center", "none", "zca"),
        "loader": one_of("auto", "device", "workers"), "workers": None,
        "class_weights": one_of(None, "auto"), "balanced_sampler": one_of(True, False), "cache_dir": None,
        "zca_epsilon": positive,
    },
    "augmentation": {"train": None, "eval": None},
    "logger": {"tensorboard": None},
    "paths": {"data_dir": None, "output_root": None, "cache_dir": None},
}

# Range rules for keys inside _target_ nodes (their key names come from the target's signature).
TARGET_RULES: dict[str, dict[str, Any]] = {
    "optimizer": {"lr": positive, "momentum": in_unit_interval_half_open, "weight_decay": non_negative,
                  "alpha": positive, "k": whole(1)},
    "model": {"depth": whole(1), "width": whole(1)},
    "norm": {"num_groups": whole(1)},
}

REGULARIZATION_RULES: dict[str, dict[str, Any]] = {
    "dropout": {"p": in_unit_interval_half_open},
    "l2": {"weight_decay": non_negative, "coupling": one_of("optimizer", "loss")},
    "label_smoothing": {"epsilon": in_unit_interval_half_open},
    "l1": {"weight": non_negative},
    "elastic_net": {"l1": non_negative, "beta": non_negative},
    "mixup": {"alpha": positive},
    "cutmix": {"alpha": positive, "switch_prob": probability},
    "early_stopping": {"monitor": one_of(*MONITORABLE), "mode": one_of("max", "min"), "patience": whole(1),
                       "min_delta": non_negative},
    "grad_clip": {"by": one_of("norm", "value"), "max_norm": positive, "value": positive, "norm_type": positive},
}


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError for the first problem found; silent for a good config."""
    for group, schema in SCHEMAS.items():
        node = cfg.get(group)
        if node is None:
            continue
        for key in node:
            if key not in schema:
                raise UserError(f"{group}.{key}: unknown key; {group} takes {', '.join(sorted(schema))}")
            rule = schema[key]
            value = node.get(key)
            if rule is not None and not rule(value):
                raise allowed(f"{group}.{key}", value, describe(rule))
    for group in ("optimizer", "schedule", "model", "norm", "activation", "init"):
        node = cfg.get(group)
        if node is not None:
            check_target_node(group, node, TARGET_RULES.get(group, {}), EXTRA_KEYS.get(group, set()))
    for split in ("train", "eval"):
        for i, transform in enumerate((cfg.get("augmentation") or {}).get(split) or []):
            if isinstance(transform, DictConfig):
                check_target_node(f"augmentation.{split}[{i}]", transform, {})
    for name, node in (cfg.get("regularization") or {}).items():
        rules = REGULARIZATION_RULES.get(name, {})
        if not isinstance(node, DictConfig):
            continue
        for key, rule in rules.items():
            if key in node and not rule(node[key]):
                raise allowed(f"regularization.{name}.{key}", node[key], describe(rule))
    image_grid = OmegaConf.select(cfg, "logger.tensorboard.image_grid")
    if image_grid is not None and not whole(0)(image_grid):
        raise allowed("logger.tensorboard.image_grid", image_grid, "a whole number >= 0 (0: no image grid)")
    check_lbfgs_is_noise_free(cfg)
    dataset = cfg.get("dataset") or {}
    if dataset.get("balanced_sampler") and dataset.get("class_weights") == "auto":
        raise UserError("dataset.balanced_sampler=true with dataset.class_weights=auto corrects the class imbalance twice "
                        "(rare classes would then outweigh common ones); choose one of them")


# Keys the run consumes itself before calling the target.
EXTRA_KEYS = {"schedule": set(WARMUP_KEYS)}


LBFGS = "torch.optim.LBFGS"
NOISE_SOURCES = ("dropout", "mixup", "cutmix", "grad_clip")


def check_lbfgs_is_noise_free(cfg: DictConfig) -> None:
    """L-BFGS's line search assumes the same loss at every evaluation of a step: no noise sources."""
    optimizer = cfg.get("optimizer") or {}
    if LBFGS not in (optimizer.get("_target_"), OmegaConf.select(optimizer, "base._target_")):
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


def check_target_node(path: str, node: DictConfig, rules: dict, extra: set[str] = frozenset()) -> None:
    """Every key of a _target_ node must be an argument its target accepts."""
    target = node.get("_target_")
    if target is None:
        return
    obj = locate(target)
    if obj is None:
        raise allowed(f"{path}._target_", target, "an importable class or function")
    accepted, takes_kwargs = signature_keys(obj)
    for key in node:
        if key.startswith("_") and key.endswith("_"):
            continue
        value = node.get(key)
        if isinstance(value, DictConfig) and "_target_" in value:
            check_target_node(f"{path}.{key}", value, rules, extra)
            continue
        if key not in accepted and key not in extra and not takes_kwargs:
            raise UserError(f"{path}.{key}: unknown key for {target}; allowed: {', '.join(sorted(accepted | extra))}")
        rule = rules.get(key)
        if rule is not None and not rule(value):
            raise allowed(f"{path}.{key}", value, describe(rule))


def locate(dotted: str):
    """The object at a dotted path, or None (quietly: Hydra's get_object logs its failures)."""
    module, _, name = str(dotted).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


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
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in HASH_IGNORED:
        container.pop(key, None)
    container.get("trainer", {}).pop("progress", None)
    for key in HASH_IGNORED_DATASET:
        container.get("dataset", {}).pop(key, None)
    return hashlib.sha1(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]
