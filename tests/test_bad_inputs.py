"""Bad input fails before training with one line naming the key, the value and what is allowed.

Each case runs the real `trainkit` command; exit code 2 for user errors, nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import run_trainkit
from trainkit.checkpoints import FORMAT

OPTIMIZERS = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "optimizer").glob("*.yaml")))

CASES = [
    (["optimizer=adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["-m", "optimizer=sgd,adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["optimizer.lrr=0.1"], "optimizer.lrr=0.1: there is no key 'optimizer.lrr' in the config (see the keys of "
                            "'optimizer' with --cfg job); to add a new key write +optimizer.lrr=0.1"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: a number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: a number > 0"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: a number > 0"),
    (["optimizer=momentum", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not allowed: a number in [0, 1)"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: a whole number >= 1"),
    (["trainer.epochs=ten"], "trainer.epochs='ten' is not allowed: a whole number >= 1"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed: a whole number >= 1"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5 is not allowed: a number strictly between 0 and 1"),
    (["dataset.val_fraction=0"], "dataset.val_fraction=0 is not allowed: a number strictly between 0 and 1"),
    (["regularization=[dropout]", "regularization.dropout.p=1.0"], "regularization.dropout.p=1.0 is not allowed: a number in [0, 1)"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not allowed: auto, cpu, cuda, cuda:N or mps"),
    (["trainer.precision=8"], "trainer.precision=8 is not allowed: auto, 32, bf16 or 16"),
    (["trainer.monitor=val/accuracy"], "trainer.monitor='val/accuracy' is not allowed: val/acc, val/loss, train/acc, train/loss"),
    (["trainer.mode=maximum"], "trainer.mode='maximum' is not allowed: max, min"),
    (["dataset.preprocess=whiten"], "dataset.preprocess='whiten' is not allowed: standardize, center, none, zca"),
    (["dataset.loader=gpu"], "dataset.loader='gpu' is not allowed: auto, device, workers"),
    (["norm=group", "norm.num_groups=7"], "norm.num_groups=7 is not allowed: must divide every layer width; 32 is not a multiple"),
    (["model=resnet", "model.depth=21"], "model.depth=21 is not allowed: 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)"),
    (["dataset=imagefolder"], "dataset=imagefolder needs dataset.root: a folder with train/<class>/ sub-folders "
                              "(and optionally val/ and test/), or with one sub-folder of images per class"),
    (["dataset=imagefolder", "dataset.root=/nonexistent"], "dataset.root='/nonexistent': /nonexistent is not a folder; put one "
                                                         "sub-folder of images per class there (or train/<class>/, val/<class>/, test/<class>/)"),
    (["dataset=mnist", "dataset.data_dir=/nonexistent", "dataset.download=false"],
     "dataset=mnist: could not read the files in /nonexistent/MNIST/raw (dataset.download is false: Dataset not found. You can "
     "use download=True to download it); put the unpacked idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
     "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there, or set dataset.data_dir (or TRAINKIT_DATA_DIR) to the folder "
     "that holds MNIST/raw"),
    (["augmentation.train=[{_target_: albumentations.HorizontalFlip, q: 2}]"],
     "augmentation.train[0].q: unknown key for albumentations.HorizontalFlip; allowed: p"),
    (["augmentation.train=[{_target_: albumentations.HorizontalFlip, p: 2}]"],
     "augmentation.train[0] (albumentations.HorizontalFlip): p=2 is not allowed: input should be less than or equal to 1"),
    (["augmentation.train=[{_target_: albumentations.Flipp}]"],
     "augmentation.train[0]._target_='albumentations.Flipp' is not allowed: an importable class or function"),
    (["dataset.balanced_sampler=true", "dataset.class_weights=auto"],
     "dataset.balanced_sampler=true with dataset.class_weights=auto corrects the class imbalance twice (rare classes "
     "would then outweigh common ones); choose one of them"),
    (["resume=/nonexistent"], "resume=/nonexistent: no such run folder or checkpoint file"),
    (["resume=trunc.pt"], "checkpoint trunc.pt: truncated or corrupt, not a readable torch file (PytorchStreamReader failed "
                          "reading zip archive: failed finding central directory)"),
    (["resume=evil.pt"], "checkpoint evil.pt: refused, it asks to call posix.system; loading it could run code "
                         "(a checkpoint is read as data only)"),
    (["resume=foreign.pt"], f"checkpoint foreign.pt: not a trainkit checkpoint (no '{FORMAT}' format marker)"),
    (["resume=mlp_run", "model.hidden=[32,16]"],
     "model.hidden=[32, 16] is not allowed on resume: the run in mlp_run/checkpoints/last.pt was trained with "
     "model.hidden=[256, 128], and a resumed run continues the same training; start a new run to change it"),
    (["resume=mlp_run", "optimizer.lr=0.1"],
     "optimizer.lr=0.1 is not allowed on resume: the run in mlp_run/checkpoints/last.pt was trained with "
     "optimizer.lr=0.001, and a resumed run continues the same training; start a new run to change it"),
    (["resume=mlp_run", "trainer.epochs=5"],
     "trainer.epochs=5 is not allowed on resume: the run was planned for 1 epochs and its schedule (cosine) follows "
     "that length; start a new run, or use a schedule without a planned length (e.g. step, plateau) to extend runs"),
    (["optimizer=lbfgs", "regularization=[dropout]"],
     "regularization=dropout is not allowed with optimizer=lbfgs: its line search needs the same loss at every "
     "evaluation; drop it (l2, l1, elastic_net and label_smoothing are fine)"),
    (["schedule.warmup_epochs=20", "trainer.epochs=2"],
     "a warmup of 420 steps is not allowed in a run of 42 steps (2 epochs x 21): lower schedule.warmup_epochs or "
     "schedule.warmup_steps"),
    (["optimizer=nesterov", "optimizer.momentum=0"],
     "optimizer (torch.optim.SGD): Nesterov momentum requires a momentum and zero dampening"),
    (["resume=auto", "-m", "optimizer=sgd,adam"], "resume=auto is not allowed with -m: resume one run at a time"),
    (["hydra.run.dir=mlp_run"], "hydra.run.dir='mlp_run' already holds a run; choose another folder, or continue that run "
                                "with resume=mlp_run"),
]


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one finished small run and three broken checkpoint files."""
    cwd = tmp_path_factory.mktemp("bad")
    result = run_trainkit("train", "trainer.epochs=1", "model=mlp", "hydra.run.dir=mlp_run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    data = (cwd / "mlp_run" / "checkpoints" / "last.pt").read_bytes()
    (cwd / "trunc.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": FORMAT, "model": Exploit(), "epoch": 0, "global_step": 0, "config": {}}, cwd / "evil.pt")
    torch.save({"state_dict": {}}, cwd / "foreign.pt")
    return cwd


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_code_2(workdir, args, message):
    before = snapshot(workdir)
    result = run_trainkit("train", *args, cwd=workdir, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.stdout
    assert snapshot(workdir) == before  # no run folder, no checkpoint touched
    assert not (workdir / "pwned").exists()


def test_unknown_command(tmp_path):
    result = run_trainkit("trian", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: trainkit trian: unknown command; the commands are train, preview (trainkit --help)\n"
