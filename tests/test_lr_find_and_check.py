"""Issue 11: `trainkit lr-find` and `trainkit check`, real runs of the installed CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import require_shared, run_trainkit

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def lr_find(tmp_path: Path, *overrides: str) -> tuple[Path, dict, str]:
    result = run_trainkit("lr-find", *overrides, f"paths.output_root={tmp_path / 'out'}", cwd=tmp_path, env=ONE_THREAD,
                          timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    [folder] = (tmp_path / "out" / "lr_find").iterdir()
    return folder, json.loads((folder / "lr_find.json").read_text()), result.stdout


def test_accuracy(tmp_path: Path, name: str, *overrides: str) -> float:
    result = run_trainkit("train", *overrides, "trainer.progress=false", "diagnostics.monitor=false",
                          f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, env=ONE_THREAD, timeout=1800)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / name / "metrics.json").read_text())["test"]["test/acc"]


test_accuracy.__test__ = False  # a helper, not a test


def test_lr_find_writes_its_folder_and_its_suggestion_trains_as_well_as_the_default(tmp_path):
    folder, found, out = lr_find(tmp_path)  # digits, cnn, adam
    assert folder.name.endswith("_train") and folder.parent == tmp_path / "out" / "lr_find"
    assert (folder / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((folder / "lr_find.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1.001  # exponential: a constant factor per step (10 ** (8 / 99))
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    assert len(rows) == found["steps"] <= 100
    if len(rows) < 100:  # stopped early: the smoothed loss passed 4 x its minimum
        assert smoothed[-1] > 4 * min(smoothed) and "passed 4x" in found["stopped"]
    assert found["override"] == f"optimizer.lr={found['suggestion']:.2g}" and found["override"] in out
    assert f"train with it: trainkit train paths.output_root={tmp_path / 'out'} {found['override']}\n" in out
    assert 1e-5 < found["suggestion"] < 1e-1
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "out" / "runs").exists()  # no run touched
    default = test_accuracy(tmp_path, "default", "trainer.epochs=5")
    suggested = test_accuracy(tmp_path, "suggested", "trainer.epochs=5", found["override"])
    assert suggested >= default - 0.01, (suggested, default, found["suggestion"])


@pytest.mark.slow
def test_lr_find_with_sgd_on_fashion_mnist_trains_as_well_as_the_default(tmp_path):
    data = require_shared("FashionMNIST")
    common = ("dataset=fashion_mnist", f"dataset.data_dir={data.parent}", "optimizer=sgd", "trainer.batch_size=128")
    _, found, _ = lr_find(tmp_path, *common)
    default = test_accuracy(tmp_path, "default", *common, "trainer.epochs=2")
    suggested = test_accuracy(tmp_path, "suggested", *common, "trainer.epochs=2", found["override"])
    assert suggested >= default - 0.01, (suggested, default, found["suggestion"])


def test_check_runs_the_lectures_sequence_and_debug_overfit_gives_the_same_verdict(tmp_path):
    result = run_trainkit("check", "model=mlp", f"paths.output_root={tmp_path / 'out'}", cwd=tmp_path, env=ONE_THREAD,
                          timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    [folder] = (tmp_path / "out" / "check").iterdir()
    rows = {r["step"]: r for r in json.loads((folder / "check.json").read_text())}
    assert list(rows) == ["initial loss", "inputs", "labels", "overfit a tiny subset", "regularization", "LR range test",
                          "one timed epoch"]
    assert rows["initial loss"]["verdict"] == "ok" and "vs ln(10) = 2.303" in rows["initial loss"]["figure"]
    assert rows["overfit a tiny subset"]["verdict"] == "ok"
    assert rows["regularization"]["verdict"] == "-"  # none configured
    assert "suggested" in rows["LR range test"]["figure"] and (folder / "lr_find.png").is_file()
    assert "img/s" in rows["one timed epoch"]["figure"] and "peak" in rows["one timed epoch"]["figure"]
    for step in rows:
        assert step in result.stdout
    # the overfit step is `trainkit train debug=overfit`: the same figures
    train = run_trainkit("train", "model=mlp", "debug=overfit", f"hydra.run.dir={tmp_path / 'debug'}", cwd=tmp_path,
                         env=ONE_THREAD)
    assert train.returncode == 0, train.stderr
    alone = json.loads((tmp_path / "debug" / "metrics.json").read_text())["overfit_check"]
    in_check = json.loads((folder / "overfit" / "metrics.json").read_text())["overfit_check"]
    assert alone == in_check and alone["passed"]
    assert f"train/acc {alone['train/acc']:.3f}, train/loss {alone['train/loss']:.3f}" in rows["overfit a tiny subset"]["figure"]


def test_check_sees_the_regularization_raise_the_initial_loss(tmp_path):
    result = run_trainkit("check", "model=mlp", "regularization=[l2,label_smoothing]", "regularization.l2.weight_decay=0.01",
                          "diagnostics.lr_find.steps=20", f"paths.output_root={tmp_path / 'out'}", cwd=tmp_path,
                          env=ONE_THREAD, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    [folder] = (tmp_path / "out" / "check").iterdir()
    row = {r["step"]: r for r in json.loads((folder / "check.json").read_text())}["regularization"]
    before, after = (float(x) for x in row["figure"].split(" (")[0].split(" -> "))
    assert row["verdict"] == "ok" and after > before and "l2" in row["figure"], row


@pytest.mark.parametrize("command", ["lr-find", "check"])
@pytest.mark.parametrize("args,message", [
    (["diagnostics.lr_find.start_lr=1", "diagnostics.lr_find.end_lr=1"],
     "diagnostics.lr_find.start_lr=1.0 is not allowed with diagnostics.lr_find.end_lr=1.0: the range test grows the LR, so "
     "start_lr must be below end_lr (1e-7 and 10 by default)"),
    (["diagnostics.lr_find.steps=-5"], "diagnostics.lr_find.steps=-5 is not allowed: a whole number >= 3"),
    (["+diagnostics.lr_find.stop=3"], "diagnostics.lr_find.stop=3: unknown key; diagnostics.lr_find takes diverge, end_lr, "
                                      "smoothing, start_lr, steps"),
    (["-m", "optimizer=sgd,adam"], "trainkit COMMAND takes overrides, --config-dir and --config-name; -m is not allowed "
                                   "(it runs once, on one config)"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, command, args, message):
    result = run_trainkit(command, *args, f"paths.output_root={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"error: {message.replace('COMMAND', command)}\n"
    assert not (tmp_path / "out").exists()
