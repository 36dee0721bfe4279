"""Where trainkit's `_target_` classes and functions used to live, so that what older runs recorded still reads.

Issue 10 moved the modules into layer packages (trainkit.models -> trainkit.components.models).
A checkpoint or run folder from before names the old paths: a resume compares its config with
today's through `current_targets`, and `config_hash` hashes the first spelling, so that a config's
hash (metrics.json, resume=auto) is the same before and after the move. There are no shims at the
old paths: a user's own config naming one gets the pre-run check's 'not importable' line.
"""

from __future__ import annotations

# Old module -> its home now; only modules that a config can name as a `_target_`.
MOVED_TARGETS = {
    "trainkit.models": "trainkit.components.models",
    "trainkit.normalization": "trainkit.components.normalization",
    "trainkit.initialization": "trainkit.components.initialization",
    "trainkit.lookahead": "trainkit.components.lookahead",
    "trainkit.schedules": "trainkit.components.schedules",
    "trainkit.optimizers": "trainkit.components.optimizers",
    "trainkit.regularization": "trainkit.components.regularization",
    "trainkit.early_stopping": "trainkit.engine.callbacks.early_stopping",
    "trainkit.sweep_summary": "trainkit.run.sweep_summary",
    "trainkit.augmentation": "trainkit.data.augmentation",
    "trainkit.preprocess": "trainkit.data.preprocess",
}


def current_target(name: str) -> str:
    """`name` with a module that has moved replaced by its home now (anything else as it is)."""
    return _renamed(name, MOVED_TARGETS)


def first_spelling(name: str) -> str:
    """`name` as configs wrote it before the move (anything else as it is)."""
    return _renamed(name, {new: old for old, new in MOVED_TARGETS.items()})


def current_targets(tree):
    """A plain config tree (dicts and lists) with every `_target_` at its current path."""
    return _map_targets(tree, current_target)


def first_spelling_targets(tree):
    return _map_targets(tree, first_spelling)


def _renamed(name: str, table: dict[str, str]) -> str:
    module, _, attribute = str(name).rpartition(".")
    return f"{table[module]}.{attribute}" if module in table else name


def _map_targets(tree, rename):
    if isinstance(tree, dict):
        return {k: rename(v) if k == "_target_" and isinstance(v, str) else _map_targets(v, rename) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_targets(v, rename) for v in tree]
    return tree
