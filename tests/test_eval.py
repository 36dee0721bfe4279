"""After training: trainkit eval / ensemble / predict / export, trainkit.load_run, callbacks=[snapshots].

Real runs on the bundled digits (2-3 epochs, seconds each), the installed CLI in subprocesses,
every result read back from the files it wrote."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_scalars, run_trainkit

TINY = ["trainer.epochs=2", "trainer.progress=false", "model=mlp", "logger.tensorboard.image_grid=0"]


def train(root: Path, name: str, *overrides: str) -> Path:
    result = run_trainkit("train", *TINY, f"hydra.run.dir=outputs/runs/{name}", *overrides, cwd=root,
                          env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "outputs" / "runs" / name


def tk(root: Path, *args: str):
    return run_trainkit(*args, cwd=root, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two digits runs that differ only by seed (the same test images)."""
    root = tmp_path_factory.mktemp("eval")
    a = train(root, "a", "trainer.seed=1")
    b = train(root, "b", "trainer.seed=2")
    return root, a, b


@pytest.fixture(scope="module")
def eval_rows(runs):
    """Run a's test predictions as `trainkit eval` writes them (into a folder of their own, so that no
    test depends on another having run first, on this xdist worker or another)."""
    root, run, _ = runs
    out = root / "eval_of_a"
    if not (out / "test_predictions.csv").exists():
        result = tk(root, "eval", str(run), f"out={out}")
        assert result.returncode == 0, result.stderr
    return list(csv.DictReader((out / "test_predictions.csv").open()))


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# -- trainkit eval -------------------------------------------------------------------------------

def test_eval_reproduces_the_recorded_test_accuracy_and_writes_its_report(runs):
    root, run, _ = runs
    result = tk(root, "eval", str(run), "top_k=3")
    assert result.returncode == 0, result.stderr
    recorded = json.loads((run / "metrics.json").read_text())["test"]
    report = json.loads((run / "eval" / "test.json").read_text())
    plain = report["plain"]
    assert plain["acc"] == recorded["test/acc"]  # exactly: same images, same weights, same arithmetic
    assert plain["loss"] == pytest.approx(recorded["test/loss"], rel=1e-6)
    assert "reproduced exactly" in result.stdout
    confusion = np.array(plain["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == plain["images"] == 360
    assert np.trace(confusion) / confusion.sum() == plain["acc"]
    assert {c: v["images"] for c, v in plain["per_class"].items()} == {str(i): int(confusion[i].sum()) for i in range(10)}
    assert plain["top1"] == plain["acc"] and plain["top3"] >= plain["acc"]
    assert all(p["count"] == confusion[int(p["true"]), int(p["predicted"])] for p in plain["most_confused"])
    assert 0.0 <= plain["ece"] <= 1.0 and sum(b["images"] for b in plain["reliability"]) == 360
    for png in ("test_confusion.png", "test_reliability.png"):
        assert (run / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((run / "eval" / "test_predictions.csv").open()))
    assert len(rows) == 360 and sum(r["label"] == r["predicted"] for r in rows) / 360 == plain["acc"]
    scalars = read_scalars(run / "tensorboard")
    assert scalars["eval/test/acc"][-1][1] == pytest.approx(plain["acc"])


def test_eval_prints_accuracy_with_and_without_tta(runs):
    root, run, _ = runs
    result = tk(root, "eval", str(run), "tta=flip_translate", "split=val")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "eval" / "val_tta-flip_translate.json").read_text())
    assert report["tta"] == {"kind": "flip_translate", "translate": 1, "views": 6}
    assert report["with_tta"]["images"] == report["plain"]["images"] == 144
    acc_line = next(line for line in result.stdout.splitlines() if " acc " in line)
    assert f"{report['plain']['acc']:.4f}" in acc_line and f"{report['with_tta']['acc']:.4f}" in acc_line
    assert report["recorded"]["val/acc"] == report["plain"]["acc"]  # best.pt's own validation figure


def test_tta_views():
    from trainkit.data.tta import TestTimeAugmentation

    image = torch.arange(64.0).view(1, 1, 8, 8)
    five = TestTimeAugmentation("five_crop", pad=1).views(image)
    assert len(five) == 5 and sum(w for w, _ in five) == pytest.approx(1.0)
    assert torch.equal(five[4][1], image)  # the centre crop of the padded image is the image
    assert torch.equal(five[0][1][0, 0, 1:, 1:], image[0, 0, :7, :7]) and five[0][1][0, 0, 0].sum() == 0  # padded corner
    ten = TestTimeAugmentation("ten_crop", pad=1).views(image)
    assert len(ten) == 10 and torch.equal(ten[9][1], image.flip(-1))
    shifted = TestTimeAugmentation("flip_translate").views(image)
    assert [w for w, _ in shifted] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    assert torch.equal(shifted[4][1][0, 0, 1:-1, 1:-1], image[0, 0, 2:, 2:])  # shifted by 2 pixels (reflect-padded 1)
    assert len(TestTimeAugmentation("multiscale", scales=[1.0, 1.25]).views(image)) == 20
    assert TestTimeAugmentation("five_crop").pad_for(32) == 4 and TestTimeAugmentation("five_crop").pad_for(8) == 1


def test_calibration_error_by_hand():
    from trainkit.engine.evaluation import classification_report

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    report = classification_report(probs, labels, ["a", "b"], top_k=2, bins=10)
    # bins: 0.9 holds 2 images (1 right: acc 0.5, conf 0.9), 0.6 one right, 0.7 one right
    assert report["ece"] == pytest.approx(2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.3)
    assert report["acc"] == 0.75 and report["top2"] == 1.0
    assert report["most_confused"] == [{"true": "b", "predicted": "a", "count": 1}]


# -- trainkit.load_run, predict, export -------------------------------------------------------------

def test_load_run_in_three_lines_and_import_trainkit_stays_cheap(runs, eval_rows):
    root, run, _ = runs
    import trainkit

    loaded = trainkit.load_run(run)
    assert not loaded.model.training and loaded.class_names == [str(i) for i in range(10)]
    images = test_images(loaded)
    predicted = loaded.model(loaded.preprocess(images[0])).argmax(1)
    rows = eval_rows
    assert [int(r["predicted"]) for r in rows] == predicted.tolist()
    lazy = subprocess.run([sys.executable, "-c", "import sys, trainkit; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert lazy.stdout.strip() == "False"


def test_predict_agrees_with_eval_on_test_images_written_as_pngs(runs, eval_rows, tmp_path):
    from PIL import Image

    root, run, _ = runs
    import trainkit

    images, _ = test_images(trainkit.load_run(run))
    paths = []
    for i in range(0, 360, 18):
        paths.append(tmp_path / f"test_{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(paths[-1])
    result = tk(root, "predict", str(run), *map(str, paths), "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line)["top"] for line in result.stdout.splitlines()]
    rows = eval_rows
    assert [top[0]["class"] for top in predicted] == [rows[i]["predicted"] for i in range(0, 360, 18)]
    assert all(len(top) == 3 and top[0]["probability"] >= top[1]["probability"] for top in predicted)
    assert all(float(rows[i]["confidence"]) == pytest.approx(top[0]["probability"], abs=1e-5)
               for i, top in zip(range(0, 360, 18), predicted))


def test_torchscript_export_loads_without_trainkit(runs, tmp_path):
    root, run, _ = runs
    result = tk(root, "export", str(run), "--format", "torchscript", "--out", str(tmp_path / "digits"))
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "digits.torchscript.pt.json").read_text())
    assert info["class_names"] == [str(i) for i in range(10)] and info["input"]["dtype"] == "uint8"
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    torch.save(images, tmp_path / "images.pt")
    code = ("import sys, warnings, torch; warnings.simplefilter('ignore');"
            f"m = torch.jit.load({str(tmp_path / 'digits.torchscript.pt')!r});"
            f"torch.save(m(torch.load({str(tmp_path / 'images.pt')!r})), {str(tmp_path / 'out.pt')!r});"
            "print(any(k.startswith('trainkit') for k in sys.modules))")
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout.strip() == "False", alone.stderr
    import trainkit

    loaded = trainkit.load_run(run)
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess(images))
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_gives_the_same_logits(runs, tmp_path):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package, reason=f"{package} is not installed (pip install 'trainkit[onnx]')")
    import onnxruntime

    root, run, _ = runs
    result = tk(root, "export", str(run), "--format=onnx", "--out", str(tmp_path / "digits"))
    assert result.returncode == 0, result.stderr
    import trainkit

    loaded = trainkit.load_run(run)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    session = onnxruntime.InferenceSession(str(tmp_path / "digits.onnx"))
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess(images)).numpy()
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], expected, atol=1e-4, rtol=1e-4)


def test_images(loaded) -> tuple[torch.Tensor, np.ndarray]:
    """The run's test images (uint8 N,C,H,W) and labels, from its own recorded dataset config."""
    from omegaconf import OmegaConf

    from trainkit.data.datasets import build_splits

    cfg = OmegaConf.create(loaded.config)
    test = build_splits(cfg.dataset, int(cfg.dataset.split_seed)).test
    return torch.from_numpy(test.images).permute(0, 3, 1, 2).contiguous(), test.labels


test_images.__test__ = False


# -- ensembles ---------------------------------------------------------------------------------------

def test_ensemble_of_runs_reports_members_and_the_mean_softmax(runs, tmp_path):
    root, a, b = runs
    result = tk(root, "ensemble", str(a), str(b), f"out={tmp_path}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "ensemble_2-runs_test.json").read_text())
    recorded = [json.loads((r / "metrics.json").read_text())["test"]["test/acc"] for r in (a, b)]
    assert [m["acc"] for m in report["members"]] == recorded
    assert report["gain_over_best_member"] == pytest.approx(report["plain"]["acc"] - max(recorded))
    import trainkit

    members = [trainkit.load_run(r) for r in (a, b)]
    images, labels = test_images(members[0])
    with torch.no_grad():
        mean = sum(m.model(m.preprocess(images)).softmax(1) for m in members) / 2
    assert report["plain"]["acc"] == pytest.approx(float((mean.argmax(1).numpy() == labels).mean()))
    assert "ensemble gain over the best member" in result.stdout


@pytest.mark.slow
def test_snapshots_at_each_cycle_end_and_their_ensemble(runs):
    root = runs[0]
    snap = train(root, "snap", "trainer.epochs=3", "schedule=cosine_restarts", "schedule.cycle_epochs=1",
                 "schedule.cycle_mult=1", "callbacks=[snapshots]")
    assert sorted(p.name for p in (snap / "checkpoints" / "snapshots").iterdir()) == \
        ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    result = tk(root, "ensemble", str(snap), "--snapshots", "--top", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((snap / "eval" / "ensemble_2-snapshots_test.json").read_text())
    assert [m["name"] for m in report["members"]] == ["snapshot epoch_0002 (epoch 2)", "snapshot epoch_0003 (epoch 3)"]


def test_cycle_end_epochs():
    from trainkit.engine.callbacks.snapshots import cycle_end_epochs

    assert cycle_end_epochs(10, 20, cycle_epochs=1, cycle_mult=2) == {1, 3, 7, 15}
    assert cycle_end_epochs(10, 9, cycle_epochs=2, cycle_mult=1, warmup_epochs=1) == {3, 5, 7, 9}
    assert cycle_end_epochs(4, 5, cycle_epochs=1.5, cycle_mult=1) == {2, 3, 5}  # 6, 12, 18 steps


# -- bad input: one line, exit code 2, the run folder left as it was -------------------------------------

@pytest.fixture(scope="module")
def other_classes(runs, tmp_path_factory):
    """An imagefolder dataset of 8x8 grey PNGs whose classes are not the digits'."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("letters")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def bad_cases(root: Path, a: Path, b: Path, letters: Path) -> list[tuple[list[str], str]]:
    (root / "empty_run").mkdir(exist_ok=True)
    (root / "notes.png").write_text("not an image")
    return [
        (["eval", str(root / "empty_run")], "no checkpoint in this run folder"),
        (["eval", str(a), "dataset=imagefolder", f"dataset.root={letters}", "dataset.image_size=8",
          "dataset.in_channels=1", "dataset.num_classes=null", "dataset.class_names=null"],
         "has the classes [a, b] (2) but the run"),
        (["eval", str(a), "dataset=imagefolder", f"dataset.root={letters}", "dataset.in_channels=1",
          "dataset.num_classes=null", "dataset.class_names=null"], "has 32x32x1 images but the run"),
        (["eval", str(a), "tta=five_crop", "tta.pad=3"], "tta.pad=3 is too big for 8x8 images"),
        (["eval", str(a), "tta=ten_crop", "tta.padding=wrap"], "tta.padding='wrap' is not allowed"),
        (["eval", str(a), "split=holdout"], "split='holdout' is not allowed"),
        (["eval", str(a), "dataset.split_sed=3"], "there is no key 'dataset.split_sed'"),
        (["predict", str(a), str(root / "missing.png")], "missing.png: no such image file"),
        (["predict", str(a), str(root / "notes.png")], "notes.png: not an image"),
        (["ensemble", str(a)], "an ensemble needs at least 2 members"),
        (["ensemble", str(a), "--snapshots"], "no snapshots in checkpoints/snapshots/"),
        (["export", str(a), "--format", "pickle"], "--format=pickle is not allowed: torchscript, onnx"),
    ]


QUICK = ("no checkpoint", "has the classes", "tta.pad=3", "no such image file", "not an image")


@pytest.mark.parametrize("quick", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["issue-cases", "more"])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_as_it_was(runs, other_classes, quick):
    root, a, b = runs
    cases = [c for c in bad_cases(root, a, b, other_classes) if any(q in c[1] for q in QUICK) == quick]
    before = folder_hash(a)
    for args, message in cases:
        result = tk(root, *args)
        assert result.returncode == 2, (args, result.stderr[-1500:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr[-1500:])
    assert folder_hash(a) == before


@pytest.mark.slow
def test_incompatible_ensemble_is_refused(runs, tmp_path):
    root, a, _ = runs
    other = train(root, "held_out_differently", "dataset.test_fraction=0.3", "trainer.epochs=1")
    result = tk(root, "ensemble", str(a), str(other), f"out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "test splits hold different images (dataset.test_fraction 0.2 vs 0.3)" in result.stderr
    assert not any(tmp_path.iterdir())


def test_no_callbacks_picked_keeps_the_config_hash_of_older_runs(compose_train):
    """resume=auto finds runs by config hash: the empty callbacks node must not change it."""
    from omegaconf import OmegaConf, open_dict

    from trainkit.config.check import config_hash

    cfg = compose_train()
    older = cfg.copy()
    with open_dict(older):
        del older["callbacks"]
    assert "callbacks" in cfg and config_hash(cfg) == config_hash(older)
    assert config_hash(compose_train("callbacks=[snapshots]", "schedule=cosine_restarts")) != \
        config_hash(compose_train("schedule=cosine_restarts"))
    assert OmegaConf.to_container(compose_train("callbacks=[snapshots]").callbacks) == {"snapshots": {"every_n_epochs": None}}
