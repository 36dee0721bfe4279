"""`trainkit train` end to end through the real CLI: digits, the default run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import only_run_dir, read_scalars, run_trainkit
from trainkit import metrics as M


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("default")
    result = run_trainkit("train", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd, only_run_dir(cwd), result


def test_default_run_reaches_095_test_accuracy(default_run):
    _, run_dir, result = default_run
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["epochs_run"] == 10
    assert record["test"]["test/acc"] >= 0.95
    assert record["best"] >= 0.9 and 1 <= record["best_epoch"] <= 10
    assert record["loader"].startswith("device (") and record["device"] == "cpu"  # what fed the loop, and why
    assert len(record["epoch_seconds"]) == 10
    # Each epoch split into its steps, its validation and the rest, adding up to the epoch's seconds.
    assert len(record["epoch_phase_seconds"]) == 10
    for seconds, phases in zip(record["epoch_seconds"], record["epoch_phase_seconds"]):
        assert phases["train"] > 0 and phases["val"] > 0 and phases["rest"] >= 0
        assert abs(phases["train"] + phases["val"] + phases["rest"] - seconds) < 0.01
        assert phases["train"] > phases["val"]  # about 1,300 training images with gradients against about 140 without
    assert str(run_dir) in result.stdout  # the user is told where the run is
    assert "test/acc" in result.stdout  # the results table


def test_event_file_holds_the_curves(default_run):
    _, run_dir, _ = default_run
    scalars = read_scalars(run_dir / "tensorboard")
    for tag in (M.TRAIN_LOSS, M.TRAIN_ACC, M.VAL_LOSS, M.VAL_ACC, M.LR, M.TEST_LOSS, M.TEST_ACC):
        assert tag in scalars, (tag, sorted(scalars))
    assert len(scalars[M.VAL_ACC]) == 10  # once per epoch
    assert len(scalars[M.LR]) > 10  # per step (every log_every_n_steps)
    assert scalars[M.LR][0] == (1, pytest.approx(1e-3))  # the LR step 1 used: adam's lr, cosine not yet moved
    assert 0 < scalars[M.LR][-1][1] < 1e-5  # the last step's LR: near the end of the cosine, not past it
    losses = [v for _, v in scalars[M.TRAIN_LOSS]]
    assert losses[-1] < losses[0] / 3
    record = json.loads((run_dir / "metrics.json").read_text())
    assert scalars[M.TEST_ACC][-1][1] == pytest.approx(record["test"]["test/acc"], abs=1e-6)


def test_hparams_are_logged_for_the_hparams_tab(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, run_dir, _ = default_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert "train/augmented_images" in acc.Tags()["images"]  # the grid of what the model sees
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["optimizer"].string_value == "adam"
    assert info.hparams["optimizer.lr"].number_value == pytest.approx(0.001)
    assert info.hparams["model"].string_value == "cnn"


def test_best_checkpoint_reproduces_its_validation_accuracy(default_run):
    from trainkit.engine.checkpoints import load_checkpoint
    from trainkit.data.build import build_data
    from trainkit.engine.loop import evaluate
    from trainkit.components.assembly import build_model

    _, run_dir, _ = default_run
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)  # plain data, no code
    for key in ("model", "optimizer", "schedule", "epoch", "config", "callbacks", "rng"):
        assert key in payload
    cfg = OmegaConf.create(payload["config"])
    data = build_data(cfg, torch.device("cpu"))
    model = build_model(cfg, data.spec, dropout=0.0)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    val = evaluate(model, data.val, data.to_device, torch.device("cpu"), prefix="val")
    assert val[M.VAL_ACC] == pytest.approx(payload["metrics"][M.VAL_ACC], abs=1e-9)
    assert payload["callbacks"]["best_checkpoint"]["best"] == pytest.approx(val[M.VAL_ACC])
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 10


def test_same_seed_same_metrics(tmp_path):
    records = []
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        result = run_trainkit("train", "trainer.epochs=2", cwd=cwd)
        assert result.returncode == 0, result.stderr
        records.append(json.loads((only_run_dir(cwd) / "metrics.json").read_text()))
    assert records[0]["final"] == records[1]["final"]
    assert records[0]["test"] == records[1]["test"]


def test_help_lists_groups_and_options(tmp_path):
    result = run_trainkit("train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "optimizer: " in result.stdout and "adamw" in result.stdout
    assert "regularization: " in result.stdout
    top = run_trainkit("--help", cwd=tmp_path)
    assert "train" in top.stdout and "preview" in top.stdout


@pytest.mark.parametrize("line,offered", [
    ("trainkit ", "train preview check lr-find"),
    ("trainkit train optimizer=ad", "optimizer=adagrad optimizer=adam optimizer=adamw"),
    ("trainkit train trainer.ep", "trainer.epochs="),
    ("trainkit preview ou", "out="),
])
def test_shell_completion_offers_commands_groups_options_and_keys(tmp_path, line, offered):
    # What bash's completion hook (eval "$(trainkit train -sc install=bash)") asks for at each <TAB>.
    result = run_trainkit("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == offered.split()
    install = run_trainkit("train", "-sc", "install=bash", cwd=tmp_path)
    assert "complete -o nospace -o default -F hydra_bash_completion trainkit" in install.stdout


def test_info_and_searchpath_work_as_in_any_hydra_app(tmp_path):
    info = run_trainkit("train", "--info", "searchpath", cwd=tmp_path)
    assert info.returncode == 0 and "pkg://trainkit.configs" in info.stdout
    (tmp_path / "extra" / "optimizer").mkdir(parents=True)
    (tmp_path / "extra" / "optimizer" / "slow_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\nlr: 0.001\n")
    cfg = run_trainkit("train", f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "optimizer=slow_sgd", "--cfg", "job",
                       cwd=tmp_path)
    assert cfg.returncode == 0, cfg.stderr
    assert OmegaConf.create(cfg.stdout).optimizer.lr == 0.001


def test_cfg_job_prints_composed_config_without_running(tmp_path):
    result = run_trainkit("train", "optimizer=sgd", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert not (tmp_path / "outputs").exists()


def test_unknown_option_fails_fast_listing_the_choices(tmp_path):
    result = run_trainkit("train", "optimizer=adamm", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: optimizer=adamm is not allowed: the optimizer options are " + \
        ", ".join(sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[1] / "configs" / "optimizer").glob("*.yaml")))
    assert not (tmp_path / "outputs").exists()


def test_run_dir_override_is_used(tmp_path):
    result = run_trainkit("train", "trainer.epochs=1", "hydra.run.dir=my_run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my_run" / "checkpoints" / "best.pt").is_file()
    again = run_trainkit("train", "trainer.epochs=1", "hydra.run.dir=my_run", cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds a run" in again.stderr


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    result = run_trainkit("train", "optimizer=sgd", "norm=none", "optimizer.lr=1e12", "trainer.epochs=2",
                          "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "diverged"
    assert record["message"].startswith("the training loss became nan at step 2 (epoch 1)")
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_divergence_after_a_good_epoch_leaves_the_checkpoints_as_they_were(tmp_path):
    # The step schedule multiplies the LR by 1e12 after epoch 2: epoch 3 diverges.
    result = run_trainkit("train", "optimizer=sgd", "norm=none", "schedule=step", "schedule.step_epochs=2",
                          "schedule.gamma=1e12", "trainer.epochs=4", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["epochs_run"] == 2
    assert "(epoch 3)" in record["message"]
    assert "epoch 2/4 " in result.stdout and "lr 0.05 " in result.stdout.split("epoch 2/4 ")[1]  # the LR epoch 2 trained at
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == record["best_epoch"] and last["epoch"] == 2  # nothing from the diverged epoch
    for checkpoint in (best, last):
        assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_nan_loss_skip_drops_the_update_and_goes_on(tmp_path):
    # Step 1 is finite and blows the weights up; from step 2 every loss is NaN. Epoch 1 keeps its
    # one good step and skips the other 20; epoch 2 has no good step left, which is divergence.
    result = run_trainkit("train", "optimizer=sgd", "norm=none", "optimizer.lr=1e12", "trainer.epochs=2",
                          "trainer.on_nan=skip", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["epochs_run"] == 1
    assert record["skipped_steps"] == 20 + 21
    assert record["message"] == ("every step of epoch 2 had a non-finite loss (21 skipped); lower optimizer.lr or add "
                                 "regularization=[grad_clip]")
    assert "epoch 1/2  train/loss " in result.stdout  # the epoch it finished, from its one counted step


def test_own_config_folder_adds_an_option_and_resume_keeps_it(tmp_path):
    (tmp_path / "my_configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_configs" / "optimizer" / "fast_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\nlr: 0.2\n")
    result = run_trainkit("train", "--config-dir", "my_configs", "optimizer=fast_sgd", "schedule=constant",
                          "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["optimizer"] == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.2,
                                            "weight_decay": 0.0, "exclude_bias_and_norm": True, "foreach": None,
                                            "fused": None}
    # The run records where its options came from, so extending it needs no --config-dir.
    again = run_trainkit("train", "resume=run", "trainer.epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from run/checkpoints/last.pt: epoch 1" in again.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 2
    unknown = run_trainkit("train", "optimizer=fast_sgd", cwd=tmp_path)
    assert unknown.returncode == 2 and "optimizer=fast_sgd is not allowed" in unknown.stderr


def test_own_root_config_with_config_name(tmp_path):
    # --config-name picks another root config; the pre-run check composes the same one Hydra runs.
    (tmp_path / "my_configs").mkdir()
    (tmp_path / "my_configs" / "mytrain.yaml").write_text(
        "defaults:\n  - train\n  - override model: mlp\n  - _self_\ntrainer:\n  epochs: 1\n")
    result = run_trainkit("train", "--config-dir", "my_configs", "--config-name", "mytrain", "model.hidden=[32]",
                          "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["model"]["hidden"] == [32] and saved["epoch"] == 1


def test_the_run_log_holds_what_the_terminal_showed(default_run):
    _, run_dir, result = default_run
    log = (run_dir / "train.log").read_text()
    for line in ("run dir: ", "data: digits, 1293 train / 144 val / 360 test", "weight decay: none",
                 "epoch 1/10  train/loss", "epoch 10/10  train/loss", "results: "):
        assert line in log, line
    assert log.count("[trainkit][INFO]") >= 14
    assert "epoch 10/10  train/loss" in result.stdout and result.stdout.count("epoch 10/10") == 1  # shown once


def test_gradient_clipping_logs_the_gradient_norm(tmp_path):
    result = run_trainkit("train", "regularization=[grad_clip]", "trainer.epochs=1", "trainer.log_every_n_steps=1",
                          "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    norms = [v for _, v in read_scalars(tmp_path / "run" / "tensorboard")[M.GRAD_NORM]]
    assert len(norms) == 21 and all(v > 0 for v in norms)  # one per step of the epoch


# issue 9: CLI and start-up

HEAVY = ("torch", "torchvision", "albumentations", "sklearn")  # sklearn: ~1.2 s to import, 2.5x a whole --cfg job


@pytest.mark.parametrize("args,code", [
    (["train", "--cfg", "job"], 0),
    (["train", "--help"], 0),
    (["train", "optimizer=adamm"], 2),
    (["train", "trainer.epoch=3"], 2),
    (["train", "optimizer.lr=-0.1"], 2),
    (["train", "--cfg", "job", "optimizer=adamm"], 2),
])
def test_checking_a_config_imports_no_torch(tmp_path, args, code):
    # What a user waits on before anything is built must not pay for importing torch (scripts/bench_startup.py).
    import subprocess
    import sys

    program = ("import atexit, sys\n"
               f"atexit.register(lambda: print('imported:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
               f"from trainkit.cli.main import main\nmain({args!r})")
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == "imported: []"
    assert list(tmp_path.iterdir()) == []


def test_version_comes_from_the_package():
    from importlib.metadata import version

    import trainkit

    result = run_trainkit("--version", cwd=Path(__file__).parent)
    assert result.returncode == 0
    assert result.stdout == f"trainkit {trainkit.__version__}\n" == f"trainkit {version('trainkit')}\n"


def test_arguments_in_any_order(tmp_path):
    # Overrides before --config-dir and on both sides of -m: Hydra itself takes only flags first.
    (tmp_path / "my_configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_configs" / "optimizer" / "fast_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\nlr: 0.2\n")
    result = run_trainkit("train", "optimizer=fast_sgd", "model=mlp", "--config-dir", "my_configs", "trainer.epochs=1",
                          "-m", "hydra.sweep.dir=sweep", "schedule=constant", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = torch.load(tmp_path / "sweep" / "0" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["optimizer"]["lr"] == 0.2 and saved["config"]["schedule"]["_target_"].endswith("constant")
    assert json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())["status"] == "completed"


def test_home_is_expanded_in_path_values(tmp_path):
    # Hydra's grammar cannot read ~; a home folder with a space and an accent needs quoting once expanded.
    home = tmp_path / "hé me"
    (home / "my_configs" / "optimizer").mkdir(parents=True)
    (home / "my_configs" / "optimizer" / "fast_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\nlr: 0.2\n")
    result = run_trainkit("train", "--config-dir=~/my_configs", "optimizer=fast_sgd", "dataset=imagefolder",
                          "dataset.root=~/pets", "paths.output_root=~/outs", "--cfg", "all", "--resolve",
                          cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.dataset.root == str(home / "pets") and cfg.paths.output_root == str(home / "outs")
    assert cfg.optimizer.lr == 0.2 and cfg.hydra.run.dir.startswith(str(home / "outs" / "runs") + "/")


def test_a_run_with_stdout_closed_logs_to_train_log(tmp_path):
    import subprocess

    from conftest import trainkit_command

    command = " ".join([*trainkit_command(), "train", "model=mlp", "trainer.epochs=1", "hydra.run.dir=run"])
    result = subprocess.run(f"{command} >&-", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    assert "epoch 1/1  train/loss" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("group,option,yaml,message", [
    ("optimizer", "listy", "- lr\n- 0.1\n",
     "optimizer=listy is not allowed: WORKDIR/my_configs/optimizer/listy.yaml holds a list, not a mapping of keys to "
     "values (an option sets its group's keys, one 'key: value' line each, as trainkit's configs/optimizer/*.yaml do)"),
    ("activation", "bare_relu", "_target_: torch.nn.ReLU\n",  # no _partial_: the model cannot make one per layer
     "activation: these settings cannot be built: TypeError: ReLU.forward() missing 1 required positional argument: 'input'"),
    ("init", "xavier_fn", "_target_: torch.nn.init.xavier_uniform_\n_partial_: true\n",  # a tensor function, not a model's
     "init: these settings cannot be built: AttributeError: 'SmallCNN' object has no attribute 'dim'"),
])
def test_a_broken_option_of_ones_own_is_blamed_on_its_group(tmp_path, group, option, yaml, message):
    (tmp_path / "my_configs" / group).mkdir(parents=True)
    (tmp_path / "my_configs" / group / f"{option}.yaml").write_text(yaml)
    result = run_trainkit("train", "--config-dir", "my_configs", f"{group}={option}", cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"error: {message.replace('WORKDIR', str(tmp_path))}\n")
    assert not (tmp_path / "outputs").exists()


def test_the_largest_allowed_seed_is_the_loaders_real_limit():
    from trainkit.config.rules import SEED_MAX
    from trainkit.data.loaders import epoch_generator

    epoch_generator(SEED_MAX, 10**6)  # a million epochs still fit torch's 64-bit seed
    with pytest.raises((ValueError, OverflowError, RuntimeError)):
        epoch_generator(SEED_MAX + 1, 10**6)
    assert f"0 to {SEED_MAX} " in (Path(__file__).parents[1] / "configs" / "trainer" / "default.yaml").read_text()
