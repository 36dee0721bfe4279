"""Coarse to fine: a finished search's top trials give the next search's ranges.

The rule, per swept parameter, with u = log10(x) for log parameters and u = x otherwise:
  old range [A, B]; the top K completed trials span [a, b] (in u);
  new width  W' = max(b - a, F * (B - A))          at least F of the old width: K agreeing trials do not
                                                     collapse the range to a point
  new range  centred on (a + b) / 2, width W', slid (not squeezed) back inside [A, B]
  back to x, rounded outward to 3 significant figures; ints: floor/ceil, and a fixed value if that leaves one
Choices keep the options that reached the top K (in their old order); one left: it becomes a fixed value.
A parameter whose top-K values gather at one edge of its old range (one of them within 5% of the width
from it, all within half the width) gets a warning: the optimum may lie outside, and narrowing cannot find it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from trainkit.errors import UserError
from trainkit.run.study import is_study_sweeper, load_study_in
from trainkit.sweep import search_space as ss

EDGE = 0.05
REFINED = "refined"  # the new option of the hparams_search group, in <sweep>/refine/hparams_search/


@dataclass
class Refined:
    params: dict[str, str]  # the new search space, in sweep syntax
    before: dict[str, str]  # each parameter's old range, in words
    warnings: list[str]
    path: Path  # the file written
    command: str  # the fine stage's command line


def load_sweep(sweep_dir: Path):
    """(the sweep's saved config, its search space, its study, the command line's plain overrides)."""
    multirun = sweep_dir / "multirun.yaml"
    if not sweep_dir.is_dir() or not multirun.is_file():
        raise UserError(f"refine {sweep_dir}: not a sweep folder (no multirun.yaml); give the folder that "
                        "`trainkit train -m hparams_search=...` wrote")
    cfg = OmegaConf.load(multirun)
    sweeper = cfg.hydra.sweeper
    if not is_study_sweeper(sweeper):
        raise UserError(f"refine {sweep_dir}: this sweep did not search (its hydra/sweeper is not trainkit_optuna); "
                        "refine needs a study, e.g. from `trainkit train -m hparams_search=lr_wd_coarse`")
    params = {str(k): str(v) for k, v in (sweeper.params or {}).items()}
    plain = []
    for o in ss.parse_arguments(list(cfg.hydra.overrides.task)):
        if o.is_sweep_override():
            params[o.get_key_element()] = o.input_line.split("=", 1)[1]
        elif not o.get_key_element().startswith("hparams_search"):
            params.pop(o.get_key_element(), None)
            plain.append(o.input_line)
    study = load_study_in(sweep_dir, sweeper)
    if study is None:
        raise UserError(f"refine {sweep_dir}: no study in it (no optuna.journal or optuna.db); the sweep never started")
    return cfg, ss.parse(params), study, plain


def narrowed(space: ss.SearchSpace, study, top: int, shrink: float) -> tuple[dict[str, str], list[str]]:
    """The new `params` (sweep syntax, as text) and the warnings."""
    if top < 1:
        raise UserError(f"--top {top} is not allowed: a whole number >= 1 of best trials")
    if not 0 < shrink <= 1:
        raise UserError(f"--shrink {shrink} is not allowed: a fraction in (0, 1] of the old width")
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        raise UserError(f"refine: {len(completed)} completed trial(s) in the study; narrowing needs at least 2")
    best = sorted(completed, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")[:top]
    params, warnings = {}, []
    for key, d in space.distributions.items():
        values = [t.params[key] for t in best if key in t.params]
        if not values:
            params[key] = describe_sweep(d)
            continue
        if isinstance(d, CategoricalDistribution):
            kept = [c for c in d.choices if c in values]
            params[key] = ss.encode(kept[0]) if len(kept) == 1 else f"choice({', '.join(ss.encode(c) for c in kept)})"
            continue
        lo, hi, note = narrow(d, values, shrink)
        if note:
            warnings.append(f"{key}: {note}")
        params[key] = render(d, lo, hi)
    params.update(space.fixed)
    return params, warnings


def narrow(d, values: list[float], shrink: float) -> tuple[float, float, str | None]:
    to_u = math.log10 if d.log else (lambda x: x)
    from_u = (lambda u: 10 ** u) if d.log else (lambda u: u)
    A, B = to_u(d.low), to_u(d.high)
    a, b = to_u(min(values)), to_u(max(values))
    width = max(b - a, shrink * (B - A))
    lo = min(max((a + b) / 2 - width / 2, A), B - width)  # slide inside the old range, keeping the width
    hi = lo + width
    note = None
    at_low, at_high = a - A <= EDGE * (B - A), B - b <= EDGE * (B - A)
    if at_low != at_high and b - a <= 0.5 * (B - A):  # gathered at one edge (not spread over the whole range)
        edge = d.low if at_low else d.high
        note = (f"the best trials sit at the edge {edge:g} of the old range; the optimum may lie outside it: "
                "widen the range there instead of narrowing")
    return from_u(lo), from_u(hi), note


def render(d, lo: float, hi: float) -> str:
    if isinstance(d, IntDistribution):
        lo, hi = max(d.low, math.floor(lo)), min(d.high, math.ceil(hi))
        if d.step and d.step > 1:
            lo = d.low + (lo - d.low) // d.step * d.step
            hi = d.low + -(-(hi - d.low) // d.step) * d.step
            return f"range({lo}, {hi + d.step}, {d.step})" if hi > lo else str(lo)
        if hi <= lo:
            return str(lo)
        inner = f"int(interval({lo}, {hi}))"
    else:
        lo, hi = max(d.low, round_sig(lo, math.floor)), min(d.high, round_sig(hi, math.ceil))
        if d.step:
            return f"range({lo!r}, {hi + d.step!r}, {d.step!r})"
        inner = f"interval({lo!r}, {hi!r})"
    return f"tag(log, {inner})" if d.log else inner


def round_sig(x: float, direction, digits: int = 3) -> float:
    """Outward rounding to `digits` significant figures: 0.0123456 -> 0.0123 (floor) / 0.0124 (ceil)."""
    if x == 0:
        return 0.0
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
    return float(f"{direction(x * scale) / scale:.{digits}g}")


def describe_sweep(d) -> str:
    """A distribution in sweep syntax (a parameter no top trial had: kept as it was)."""
    if isinstance(d, CategoricalDistribution):
        return f"choice({', '.join(ss.encode(c) for c in d.choices)})"
    if isinstance(d, IntDistribution):
        return f"tag(log, int(interval({d.low}, {d.high})))" if d.log else f"int(interval({d.low}, {d.high}))"
    return f"tag(log, interval({d.low!r}, {d.high!r}))" if d.log else f"interval({d.low!r}, {d.high!r})"


def describe(d) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"choice({', '.join(map(str, d.choices))})"
    kind = "int" if isinstance(d, IntDistribution) else "float"
    return f"{'log ' if d.log else ''}{kind} [{d.low:g}, {d.high:g}]"


def write(sweep_dir: Path, cfg, params: dict[str, str], top: int, shrink: float) -> Path:
    """<sweep>/refine/hparams_search/refined.yaml: `--config-dir <sweep>/refine hparams_search=refined`.
    It extends the coarse stage's preset (its groups and sweeper settings) and replaces the ranges."""
    base = cfg.hydra.runtime.choices.get("hparams_search") if "runtime" in cfg.hydra else None
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    sweeper.pop("_target_", None)
    sweeper["params"] = params
    defaults = [base, "_self_"] if base and base != REFINED else [{"override /hydra/sweeper": "trainkit_optuna"}, "_self_"]
    body = yaml.safe_dump({"defaults": defaults, "hydra": {"sweeper": sweeper}}, sort_keys=False, width=200)
    out = sweep_dir / "refine" / "hparams_search" / f"{REFINED}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# @package _global_\n# The fine stage of the search in {sweep_dir}: ranges narrowed around its "
                   f"top {top} trials, to at least {shrink} of the old width (trainkit refine).\n" + body)
    return out


def refine(sweep_dir: Path, top: int = 5, shrink: float = 0.5) -> Refined:
    import shlex

    cfg, space, study, plain = load_sweep(sweep_dir)
    params, warnings = narrowed(space, study, top, shrink)
    path = write(sweep_dir, cfg, params, top, shrink)
    before = {k: describe(d) for k, d in space.distributions.items()}
    command = " ".join(["trainkit train -m", "--config-dir", shlex.quote(str(path.parent.parent)),
                        f"hparams_search={REFINED}", *map(shlex.quote, plain)])
    return Refined(params, before, warnings, path, command)
