"""Transfer learning: pretrained weights from another run, a file or torchvision's cache; what a
fine-tune trains, and with what LR; any torchvision classifier built for the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, require_shared, run_trainkit

QUICK = ("trainer.epochs=1", "trainer.batch_size=64")


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished cnn run on digits: the pretrained model the tests transfer from."""
    cwd = tmp_path_factory.mktemp("transfer")
    result = run_trainkit("train", "trainer.epochs=3", "hydra.run.dir=source", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "source"


def train(cwd: Path, name: str, *overrides: str) -> Path:
    result = run_trainkit("train", *QUICK, *overrides, f"hydra.run.dir={name}", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / name


def test_linear_probe_trains_only_the_head_with_no_state_or_decay_for_the_frozen_body(source):
    run = train(source.parent, "probe", f"model.from_run={source}", "finetune=linear_probe", "regularization=[l2]")
    body = load(source / "checkpoints" / "best.pt")["model"]
    last = load(run / "checkpoints" / "last.pt")
    # The body is the source's, bit for bit (weights and BN statistics: frozen, and not decayed); the head is new and trained.
    for key, value in body.items():
        if not key.startswith("classifier."):
            assert torch.equal(last["model"][key], value), key
    assert not torch.equal(last["model"]["classifier.weight"], body["classifier.weight"])
    # Only the head's two tensors are in the optimizer: state and weight decay for them alone.
    groups = last["optimizer"]["param_groups"]
    assert sorted(len(g["params"]) for g in groups) == [1, 1]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 5e-4]  # the head's weight decayed, its bias exempt
    assert len(last["optimizer"]["state"]) == 2
    # ln C is the loss of random weights: from pretrained ones the start check reports the loss, not a warning.
    initial = json.loads((run / "metrics.json").read_text())["diagnostics"]["initial_loss"]
    assert initial["ok"] and initial["judged"] is False and f"model.from_run={source}" in initial["message"]
    log = (run / "train.log").read_text()
    assert "finetune: linear_probe, training 1 blocks (classifier)" in log
    assert "12 frozen tensors left out (no optimizer state, no decay)" in log


def test_last_n_with_layer_wise_lr_decay(source):
    run = train(source.parent, "last2", f"model.from_run={source}", "finetune=last_n", "finetune.n=2",
                "finetune.lr_decay=0.5", "optimizer.lr=0.002")
    last = load(run / "checkpoints" / "last.pt")
    # Head x1, the block below x0.5, the next x0.25 (each with its BN's own no-decay group); the rest frozen.
    by_lr = {}
    for group in last["optimizer"]["param_groups"]:
        by_lr[group["initial_lr"]] = by_lr.get(group["initial_lr"], 0) + len(group["params"])
    assert by_lr == {0.002: 2, 0.001: 3, 0.0005: 3}  # classifier w+b; features.4 conv w (no bias before BN), bn w+b; features.3 likewise
    assert last["optimizer"]["param_groups"][0]["initial_lr"] == 0.002  # group 0 (the logged LR) is the head's
    body = load(source / "checkpoints" / "best.pt")["model"]
    assert torch.equal(last["model"]["features.1.0.weight"], body["features.1.0.weight"])
    assert not torch.equal(last["model"]["features.4.0.weight"], body["features.4.0.weight"])


def test_transfer_beats_random_features_on_a_little_data(source):
    """The digits-level transfer check: a linear probe on pretrained features against one on random features."""
    common = ("trainer.epochs=3", "dataset.train_subset=200", "finetune=linear_probe", "optimizer.lr=0.01")
    pretrained = train(source.parent, "probe200", f"model.from_run={source}", *common)
    scratch = train(source.parent, "random200", *common)
    acc = {run.name: json.loads((run / "metrics.json").read_text())["test"]["test/acc"] for run in (pretrained, scratch)}
    assert acc["probe200"] > 0.85 and acc["probe200"] > acc["random200"] + 0.2, acc
    log = (pretrained / "train.log").read_text()
    assert "data: digits, 200 train" in log


def test_a_torchvision_classifier_with_weights_from_torchvision_s_cache(tmp_path):
    """No download here: a resnet18 state dict is put where torchvision caches its ImageNet file."""
    import torchvision

    imagenet = torchvision.models.resnet18().state_dict()  # stands in for the downloaded file (same names and shapes)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet, cache / "resnet18-f37072fd.pth")
    result = run_trainkit("train", *QUICK, "trainer.limit_train_batches=2", "model=torchvision", "model.name=resnet18",
                          "model.weights=IMAGENET1K_V1", "finetune=linear_probe", "hydra.run.dir=tv", cwd=tmp_path,
                          env={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert result.returncode == 0, result.stdout + result.stderr
    last = load(tmp_path / "tv" / "checkpoints" / "last.pt")["model"]
    assert torch.equal(last["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    # The RGB stem summed to the digits' one channel, at stride 1 for 8x8 images; a new 10-class head.
    assert torch.equal(last["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True))
    assert last["fc.weight"].shape == (10, 512)
    record = json.loads((tmp_path / "tv" / "metrics.json").read_text())
    assert record["model"]["input"] == [1, 8, 8] and record["model"]["output"] == [10]
    assert [layer["name"] for layer in record["model"]["layers"]][:2] == ["conv1", "layer1.0"]
    assert record["model"]["layers"][1]["output"] == [64, 8, 8]  # no stride-2 stem, no max-pool
    # The same file given as a path loads the same way.
    result = run_trainkit("train", *QUICK, "trainer.limit_train_batches=1", "model=torchvision", "model.name=resnet18",
                          f"model.weights_path={cache / 'resnet18-f37072fd.pth'}", "finetune=linear_probe",
                          "hydra.run.dir=tv_path", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert torch.equal(load(tmp_path / "tv_path" / "checkpoints" / "last.pt")["model"]["layer4.1.conv2.weight"],
                       imagenet["layer4.1.conv2.weight"])


def test_torchvision_weights_absent_from_the_cache_and_no_internet(tmp_path):
    result = run_trainkit("train", *QUICK, "model=torchvision", "model.name=squeezenet1_1", "model.weights=DEFAULT",
                          cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "empty_home"), "https_proxy": "http://127.0.0.1:9",
                                             "NO_ALBUMENTATIONS_UPDATE": "1"})  # no download even with internet
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: model.weights=DEFAULT: squeezenet1_1-b8a52dc0.pth is not in torchvision's cache ")
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_transfer_demo_reproduces_the_readme_table(tmp_path):
    """experiment=transfer_demo end to end (Fashion-MNIST pretraining, then 4 ways on 1,000 MNIST images, one seed)."""
    require_shared("MNIST")
    require_shared("FashionMNIST")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "transfer_demo.py"), "--out", str(tmp_path), "--seeds", "0"],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr
    acc = {line[:18].strip(): float(line[18:].split()[0]) for line in out.stdout.splitlines()
           if line[:18].strip() in ("linear probe", "fine-tune last 2", "fine-tune all", "from scratch")}
    # Fashion-MNIST is far from MNIST (the lectures' "very different data"): its top-layer features make a poor
    # linear classifier for digits, while fine-tuning recovers a from-scratch net's accuracy (README's table).
    assert min(acc["fine-tune last 2"], acc["fine-tune all"], acc["from scratch"]) > 0.9, acc
    assert acc["linear probe"] < acc["fine-tune last 2"] - 0.3, acc


def test_a_transferred_run_loads_for_eval_without_its_pretrained_source(source, tmp_path):
    """load_run (eval, predict, ensemble, export) rebuilds the model from the checkpoint alone: the run
    it was pretrained from may be gone."""
    import shutil

    borrowed = tmp_path / "borrowed"
    shutil.copytree(source, borrowed)
    run = train(tmp_path, "probe", f"model.from_run={borrowed}", "finetune=linear_probe")
    shutil.rmtree(borrowed)
    result = run_trainkit("eval", "probe", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = json.loads((run / "metrics.json").read_text())["test"]["test/acc"]
    assert json.loads((run / "eval" / "test.json").read_text())["plain"]["acc"] == recorded


def test_check_of_a_linear_probe_judges_neither_the_pretrained_loss_nor_memorisation_by_the_head(source):
    result = run_trainkit("check", f"model.from_run={source}", "finetune=linear_probe", cwd=source.parent, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (source.parent / "outputs" / "check").iterdir()
    rows = {row["step"]: row for row in json.loads((folder / "check.json").read_text())}
    initial = rows["initial loss"]
    assert initial["verdict"] == "-" and initial["figure"].endswith("(pretrained weights: not judged)"), initial
    assert float(initial["figure"].split()[0]) > 0
    overfit = rows["overfit a tiny subset"]
    assert overfit["verdict"] in ("ok", "warning"), overfit  # never FAILED for a frozen body
    if overfit["verdict"] == "warning":
        assert "finetune=full" in overfit["todo"]
