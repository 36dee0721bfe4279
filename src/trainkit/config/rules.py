"""Rules for single values, and the one checker that applies a schema's rules to a config node.

A rule is a predicate with a `.what`, the allowed values in words ("a whole number >= 1"); a
failed rule becomes `allowed(key, value, what)`, the one-line message the CLI prints. Rules sit
beside their fields in config/schema.py (`epochs: int = ruled(whole(1))`); `validated` applies them
to a composed node or to a constructor's keyword arguments, so each rule is written once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainkit.errors import UserError, allowed

Rule = Callable[[Any], bool]


def rule(what: str):
    """Decorate a predicate with the words for what it allows."""
    def named(check):
        check.what = what
        return check
    return named


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@rule("a number > 0")
def positive(v) -> bool:
    return number(v) and v > 0 and math.isfinite(v)


@rule("a number >= 0")
def non_negative(v) -> bool:
    return number(v) and v >= 0 and math.isfinite(v)


@rule("a number strictly between 0 and 1")
def fraction_open(v) -> bool:
    return number(v) and 0 < v < 1


@rule("a number in [0, 1)")
def in_unit_interval_half_open(v) -> bool:
    return number(v) and 0 <= v < 1


def above(n):
    """A finite number > n (a threshold that multiplies)."""
    return rule(f"a number > {n}")(lambda v: number(v) and v > n and math.isfinite(v))


@rule("a number in [0, 1]")
def probability(v) -> bool:
    return number(v) and 0 <= v <= 1


@rule("a number in (0, 1]")
def fraction_up_to_one(v) -> bool:
    return number(v) and 0 < v <= 1


@rule("a number > 0, or inf (the largest element)")
def norm_order(v) -> bool:
    """A p-norm's p: a number > 0, or inf (a float from the command line, the string 'inf' in YAML)."""
    return v == "inf" or (number(v) and v > 0 and not math.isnan(v))


def whole(n: int):
    return rule(f"a whole number >= {n}")(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= n)


@rule("a whole number >= 1, or -1 (one job per core)")
def joblib_jobs(v) -> bool:
    return whole(1)(v) or v == -1


def whole_between(lo: int, hi: int, what: str):
    return rule(what)(lambda v: whole(lo)(v) and v <= hi)


def one_of(*choices, words: str | None = None):
    # 1 is not True: the type must match too
    return rule(words or ", ".join(map(as_yaml, choices)))(lambda v: any(v == c and type(v) is type(c) for c in choices))


def optional(check):
    return rule(f"null or {check.what}")(lambda v: v is None or check(v))


def as_yaml(value) -> str:
    """A choice as the user writes it: true, false, null."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def describe(check) -> str:
    return getattr(check, "what", None) or "see the YAML comments"


@rule("auto, cpu, cuda, cuda:N or mps")
def device_name(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None


@rule("auto, 32, bf16 or 16")
def precision(v) -> bool:
    return str(v) in ("auto", "32", "bf16", "16")


def per_channel(v) -> bool:
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(number(x) and math.isfinite(x) for x in v)


@rule("one number in [0, 1] per channel, for pixels scaled to [0, 1]")
def pixel_means(v) -> bool:
    return per_channel(v) and all(0 <= x <= 1 for x in v)


@rule("one number in (0, 1] per channel, for pixels scaled to [0, 1]")
def pixel_stds(v) -> bool:  # a zero std divides by zero: the run would only diverge later
    return per_channel(v) and all(0 < x <= 1 for x in v)


@rule("a list of whole numbers >= 1 (one width per layer)")
def widths(v) -> bool:
    return OmegaConf.is_list(v) and all(whole(1)(w) for w in v)


@rule("two numbers in [0, 1): [beta1, beta2], the decay rates of the gradient's running mean and square")
def beta_pair(v) -> bool:
    return (OmegaConf.is_list(v) or isinstance(v, (list, tuple))) and len(v) == 2 and all(in_unit_interval_half_open(b) for b in v)


# The loaders seed each epoch's torch generator with seed * 1_000_003 + epoch (loaders.epoch_generator),
# and torch takes seeds below 2**64: the largest seed that leaves room for a million epochs.
SEED_MAX = (2**64 - 1 - 10**6) // 1_000_003
seed = whole_between(0, SEED_MAX, f"a whole number from 0 to {SEED_MAX} (torch's 64-bit seed holds seed x 1000003 + epoch)")
# scikit-learn's train_test_split takes a numpy seed, which must fit in 32 bits.
split_seed = whole_between(0, 2**32 - 1, f"a whole number from 0 to {2**32 - 1} (numpy's 32-bit seed)")


# -- schemas: dataclasses whose fields carry their rule --------------------------------------------

def ruled(check: Rule | None = None):
    """A schema field with its rule. No default: the YAML file gives the value (and its comment)."""
    return dataclasses.field(default="???", metadata={"rule": check})


def nested(schema: type):
    """A schema field that is itself a schema (logger.tensorboard)."""
    return dataclasses.field(default_factory=schema, metadata={"schema": schema})


def rule_of(schema: type, key: str) -> Rule | None:
    return next((f.metadata.get("rule") for f in dataclasses.fields(schema) if f.name == key), None)


def require(check: Rule, key: str, value) -> Any:
    """`value` if it passes `check`, else the one-line error naming `key`."""
    if not check(value):
        raise allowed(key, value, describe(check))
    return value


def validated(schema: type, node, path: str) -> None:
    """Check a config node (or a constructor's keyword arguments) against a schema: no key the
    schema lacks, and each present value passing its field's rule. Missing values (???) are
    left to the code that reports what a run needs."""
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        if key not in known:
            raise UserError(f"{path}.{key}={shown(node, key)}: unknown key{did_you_mean(key, known)}; "
                            f"{path} takes {', '.join(sorted(known))}")
    for key, f in known.items():
        if key not in node or (isinstance(node, DictConfig) and OmegaConf.is_missing(node, key)):
            continue
        value = node.get(key)
        if "schema" in f.metadata and isinstance(value, (DictConfig, dict)):
            validated(f.metadata["schema"], value, f"{path}.{key}")
        elif f.metadata.get("rule") is not None:
            require(f.metadata["rule"], f"{path}.{key}", value)


def shown(node, key: str) -> str:
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
