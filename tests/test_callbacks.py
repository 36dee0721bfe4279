"""Callbacks as an extension point: an explicit order, state under fixed keys, every hook through the list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainkit.engine.callbacks.base import Callback, CallbackList
from trainkit.engine.tracking import Best
from trainkit.run.callbacks import build_callbacks
from trainkit.run.record import RunRecord

SRC = Path(__file__).parents[1] / "src" / "trainkit"


def test_callbacks_run_in_their_order_with_the_checkpoint_keys_of_before(compose_train, tmp_path):
    # issue 11's diagnostics callbacks off: the callbacks a checkpoint held before them
    cfg = compose_train("regularization=[early_stopping]", "diagnostics.sanity=false", "diagnostics.monitor=false",
                        "diagnostics.diagnosis=false")
    record = RunRecord(tmp_path, "val/acc", "max", "hash", [])
    callbacks = build_callbacks(cfg, tmp_path, Best("val/acc", "max"), record)
    assert [type(cb).__name__ for cb in callbacks] == [
        "EarlyStopping", "TensorBoardLogger", "BestCheckpoint", "LastCheckpoint", "ProgressDisplay", "RunRecord"]
    # The keys of a checkpoint's "callbacks", in the order checkpoints have always written them.
    assert list(callbacks.state_dict()) == ["early_stopping", "tensorboard", "best_checkpoint", "last_checkpoint",
                                            "progress", "run_record"]
    assert [cb.order for cb in callbacks] == sorted(cb.order for cb in callbacks)


class Recorder(Callback):
    def __init__(self, name: str, order: int, calls: list, fail_on_close: bool = False):
        self.name, self.order, self.state_key, self.calls, self.fail_on_close = name, order, name, calls, fail_on_close

    def on_epoch_end(self, trainer, metrics):
        self.calls.append((self.name, "epoch_end"))

    def close(self):
        self.calls.append((self.name, "close"))
        if self.fail_on_close:
            raise RuntimeError(f"{self.name} failed to close")

    def state_dict(self):
        return {"name": self.name}

    def load_state_dict(self, state):
        self.calls.append((self.name, "load", state["name"]))


def test_order_not_insertion_decides_and_close_reaches_every_callback_even_when_one_raises():
    calls = []
    callbacks = CallbackList([Recorder("late", 60, calls, fail_on_close=True), Recorder("early", 10, calls)])
    callbacks.on_epoch_end(None, {})
    with pytest.raises(RuntimeError, match="late failed to close"):
        callbacks.close()
    assert calls == [("early", "epoch_end"), ("late", "epoch_end"), ("early", "close"), ("late", "close")]


def test_state_is_restored_by_key_and_keys_no_callback_owns_are_ignored():
    calls = []
    callbacks = CallbackList([Recorder("a", 1, calls)])
    callbacks.load_state_dict({"a": {"name": "from-checkpoint"}, "early_stopping": {"wait": 2}})  # not configured now
    assert calls == [("a", "load", "from-checkpoint")]


def test_two_callbacks_with_one_state_key_are_refused():
    with pytest.raises(ValueError, match="same key: twice"):
        CallbackList([Recorder("twice", 1, []), Recorder("twice", 2, [])])


def test_nothing_outside_a_callback_reaches_one_by_name():
    """`callbacks["tensorboard"]`, `callbacks.get("best_checkpoint")`: every hook goes through the CallbackList."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            named = (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                     and isinstance(node.slice.value, str)) or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get")
            target = node.value if isinstance(node, ast.Subscript) else getattr(node.func, "value", None) if isinstance(node, ast.Call) else None
            if named and isinstance(target, ast.Attribute) and target.attr == "callbacks" or \
                    named and isinstance(target, ast.Name) and target.id == "callbacks":
                found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert not found, f"a callback reached by name: {', '.join(found)}"


def test_a_status_is_written_and_printed_as_its_plain_word():
    """metrics.json, the logs and `status == "completed"` comparisons in old files see the same words as before."""
    import json

    from trainkit.status import Status

    assert json.dumps({"status": Status.INTERRUPTED}) == '{"status": "interrupted"}'
    assert f"{Status.COMPLETED}" == str(Status.COMPLETED) == "completed" == Status.COMPLETED
    assert Status("diverged") is Status.DIVERGED
