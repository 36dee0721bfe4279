"""A search space written in Hydra's sweep syntax, turned into Optuna distributions.

    optimizer.lr: tag(log, interval(1e-5, 1e-1))     -> FloatDistribution(log=True)
    model.width: int(interval(16, 256))              -> IntDistribution
    model.depth: range(1, 5)                          -> IntDistribution(1, 4)  (Hydra's range excludes the stop)
    optimizer: choice(sgd, adam)                      -> CategoricalDistribution (config-group options too)
    regularization: choice([l2,dropout],[dropout])    -> CategoricalDistribution of override strings
    trainer.epochs: 3                                 -> fixed, passed to every trial
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from trainkit.errors import UserError


class SearchSpaceError(UserError):
    """A search-space entry that cannot be searched; `key` and `value` name it."""

    def __init__(self, key: str, value: str, allowed: str):
        super().__init__(f"hydra.sweeper.params.{key}={value} is not allowed: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]
    fixed: dict[str, str]  # key -> override value, as typed

    def overrides(self, params: dict) -> list[str]:
        """The override line of one trial: its sampled values, then the fixed ones."""
        return [f"{k}={encode(v)}" for k, v in params.items()] + [f"{k}={v}" for k, v in self.fixed.items()]

    @property
    def log_params(self) -> set[str]:
        return {k for k, d in self.distributions.items() if getattr(d, "log", False)}


_PLAIN = re.compile(r"^[\w\-+./:@]*$")


def encode(value) -> str:
    """A value as Hydra's override grammar reads it back (strings with spaces or commas quoted)."""
    if isinstance(value, str) and not (value.startswith("[") or _PLAIN.match(value)):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    return str(value) if not isinstance(value, float) else repr(value)


def parse_arguments(arguments: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(arguments)


def parse(params: dict[str, str]) -> SearchSpace:
    lines = [f"{k}={v}" for k, v in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as e:  # Hydra's OverrideParseException: one line of it names the problem
        raise UserError(f"hydra.sweeper.params: {str(e).strip().splitlines()[0]}") from None
    distributions, fixed = {}, {}
    for override, typed in zip(parsed, params.values(), strict=True):
        key = override.get_key_element()
        if override.is_sweep_override():
            distributions[key] = distribution(override, str(typed))
        else:
            fixed[key] = override.get_value_element_as_str()
    return SearchSpace(distributions, fixed)


def distribution(o: Override, typed: str) -> BaseDistribution:
    key, value = o.get_key_element(), o.value()
    log = "log" in (getattr(value, "tags", None) or set())
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        check_range(key, typed, low, high, log, allow_equal=False)
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, RangeSweep):
        points = list(o.sweep_iterator())
        if value.shuffle:
            raise SearchSpaceError(key, typed, "shuffle() has no meaning in a search; write range(...) or choice(...)")
        if not points:
            raise SearchSpaceError(key, typed, "the range is empty; range(start, stop, step) stops before stop")
        check_range(key, typed, points[0], points[-1], log, allow_equal=True)
        if all(isinstance(p, int) for p in points) and isinstance(value.step, int):
            return IntDistribution(points[0], points[-1], step=value.step, log=False) if not log else \
                _int_log_range(key, typed, points, value.step)
        if log:
            raise SearchSpaceError(key, typed, "a log range of floats has no fixed step; use tag(log, interval(low, high))")
        return FloatDistribution(float(points[0]), float(points[-1]), step=float(value.step))
    if isinstance(value, ChoiceSweep):
        choices = [c if is_primitive(c) else e for c, e in
                   zip(o.sweep_iterator(), o.sweep_iterator(transformer=Transformer.encode), strict=True)]
        if log:
            raise SearchSpaceError(key, typed, "log applies to interval(...) and range(...), not to choice(...)")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(key, typed, "each choice may appear once")
        return CategoricalDistribution(choices)
    raise SearchSpaceError(key, typed, "use interval(low, high), int(interval(...)), range(...), choice(...) or tag(log, ...)")


def _int_log_range(key, typed, points, step) -> IntDistribution:
    if step != 1:
        raise SearchSpaceError(key, typed, "a log int range needs step 1 (Optuna's rule); use tag(log, int(interval(a, b)))")
    return IntDistribution(points[0], points[-1], log=True)


def check_range(key: str, typed: str, low, high, log: bool, allow_equal: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SearchSpaceError(key, typed, "the bounds must be finite numbers")
    if low > high or (low == high and not allow_equal):
        raise SearchSpaceError(key, typed, f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SearchSpaceError(key, typed, f"a log range needs low > 0 (got {low}); 0 is at minus infinity on a log axis")


def is_primitive(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def grid(space: SearchSpace, points: int) -> dict[str, list]:
    """Optuna's GridSampler takes lists: choices and stepped ranges as they are; a continuous
    interval becomes `points` values, evenly spaced (geometrically for log)."""
    out = {}
    for key, d in space.distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[key] = list(d.choices)
        elif d.step is not None and (d.high - d.low) / d.step + 1 <= max(points, 2) * 4:
            n = int(round((d.high - d.low) / d.step)) + 1
            out[key] = [type(d.low)(d.low + i * d.step) for i in range(n)]
        else:
            out[key] = spaced(d.low, d.high, points, d.log, isinstance(d, IntDistribution))
    return out


def spaced(low, high, n: int, log: bool, integer: bool) -> list:
    if log:
        values = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1)) for i in range(n)]
    else:
        values = [low + i * (high - low) / (n - 1) for i in range(n)]
    if integer:
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.6g}") for v in values]  # 1e-05, not 1.0000000000000003e-05: folder names stay short
