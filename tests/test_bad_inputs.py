"""Bad input fails before training with one line naming the key, the value and what is allowed.

Each case runs the real `trainkit` command; exit code 2 for user errors, nothing written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from conftest import run_trainkit
from trainkit.engine.checkpoints import FORMAT

TORCHVISION = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
CORES = len(os.sched_getaffinity(0))
OPTIMIZERS = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "optimizer").glob("*.yaml")))

CASES = [
    (["optimizer=adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["-m", "optimizer=sgd,adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["optimizer.lrr=0.1"], "optimizer.lrr=0.1: there is no key 'optimizer.lrr' in the config (did you mean lr?); "
                            "optimizer takes betas, eps, exclude_bias_and_norm, foreach, fused, lr, weight_decay "
                            "(+optimizer.lrr=... adds an argument its _target_ accepts)"),
    (["trainer.epoch=3"], "trainer.epoch=3: there is no key 'trainer.epoch' in the config (did you mean epochs?); trainer "
                          "takes accumulate_grad_batches, batch_size, channels_last, compile, compile_mode, cudnn_benchmark, device, "
                          "devices, epochs, eval_batch_size, fast_dev_run, limit_test_batches, limit_train_batches, "
                          "limit_val_batches, log_every_n_steps, mode, monitor, on_nan, overfit_batches, pin_memory, precision, "
                          "progress, seed, sync_bn, threads"),
    (["+optimiser=adam"], "optimiser='adam': unknown top-level key (did you mean optimizer?); the config's top level holds "
                          "task_name, resume, dataset, augmentation, model, norm, activation, init, trainer, schedule, "
                          "optimizer, regularization, logger, paths, diagnostics, checkpoint"),
    (["+trainer.foo=1"], "trainer.foo=1: unknown key; trainer takes accumulate_grad_batches, batch_size, channels_last, "
                         "compile, compile_mode, cudnn_benchmark, device, devices, epochs, eval_batch_size, "
                         "fast_dev_run, limit_test_batches, limit_train_batches, limit_val_batches, log_every_n_steps, mode, monitor, "
                         "on_nan, overfit_batches, pin_memory, precision, progress, seed, sync_bn, threads"),
    (["+optimizer.lrr=3"], "optimizer.lrr=3: unknown key for torch.optim.Adam (did you mean lr?); allowed: amsgrad, betas, "
                           "capturable, decoupled_weight_decay, differentiable, eps, exclude_bias_and_norm, foreach, fused, "
                           "lr, maximize, weight_decay"),
    (["logger.tensorboard.enabled=maybe"], "logger.tensorboard.enabled='maybe' is not allowed: true, false"),
    (["+logger.tensorboard.foo=1"], "logger.tensorboard.foo=1: unknown key; logger.tensorboard takes enabled, image_grid"),
    (["regularization=[l2,dropot]"], "regularization=dropot is not allowed: the regularization options are cutmix, dropout, "
                                     "early_stopping, elastic_net, ema, grad_clip, l1, l2, label_smoothing, mixup, none, swa"),
    (["optimizer.lr=${oc.env:TRAINKIT_NO_SUCH_VARIABLE}"], "optimizer.lr: KeyError raised while resolving interpolation: "
                                                          "\"Environment variable 'TRAINKIT_NO_SUCH_VARIABLE' not found\""),
    (["--config-dir", "/nonexistent"], "--config-dir=/nonexistent is not allowed: no such folder (it should hold your own "
                                      "config groups, e.g. my_configs/optimizer/fast_sgd.yaml)"),
    (["--config-name", "nope"], "--config-name=nope is not allowed: there is no nope.yaml in trainkit's configs or --config-dir"),
    (["--config-dir", "typo_configs", "optimizer=typo_sgd"],
     "optimizer.lrr=0.2: unknown key for torch.optim.SGD (did you mean lr?); allowed: dampening, differentiable, "
     "exclude_bias_and_norm, foreach, fused, lr, maximize, momentum, nesterov, weight_decay"),
    (["--config-dir", "typo_configs", "optimizer=broken"],
     "WORKDIR/typo_configs/optimizer/broken.yaml, line 5: not valid YAML: expected ',' or ']', but got '<stream end>' "
     "(while parsing a flow sequence)"),
    (["hydra.run.dir=/proc/forbidden"], "hydra.run.dir='/proc/forbidden' is not allowed: cannot make a folder in /proc "
                                        "(No such file or directory)"),
    (["paths.output_root=mlp_run/metrics.json"],
     "hydra.run.dir='mlp_run/metrics.json/runs/RUN' is not allowed: WORKDIR/mlp_run/metrics.json is a file, not a folder"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: a number > 0"),
    (["+diagnostics.vanish_ratio=0.1"], "diagnostics.vanish_ratio=0.1: unknown key (did you mean vanishing_ratio?); diagnostics "
                                        "takes class_imbalance, dead_fraction, diagnosis, exploding_growth, histograms, "
                                        "initial_loss_tolerance, lr_find, monitor, overfit_gap, sanity, sanity_images, "
                                        "slow_progress, spike, underfit_acc, update_ratio_high, update_ratio_low, vanishing_ratio"),
    (["diagnostics.initial_loss_tolerance=-1"], "diagnostics.initial_loss_tolerance=-1.0 is not allowed: a number > 0"),
    (["diagnostics.overfit_gap=-0.05"], "diagnostics.overfit_gap=-0.05 is not allowed: a number strictly between 0 and 1"),
    (["diagnostics.lr_find.start_lr=10", "diagnostics.lr_find.end_lr=1e-3"],
     "diagnostics.lr_find.start_lr=10.0 is not allowed with diagnostics.lr_find.end_lr=0.001: the range test grows the LR, "
     "so start_lr must be below end_lr (1e-7 and 10 by default)"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: a number > 0"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: a number > 0"),
    (["optimizer=momentum", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not allowed: a number in [0, 1)"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: a whole number >= 1"),
    (["trainer.epochs=ten"], "trainer.epochs='ten' is not allowed: a whole number >= 1"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed: a whole number >= 1"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5 is not allowed: a number strictly between 0 and 1"),
    (["dataset.val_fraction=0"], "dataset.val_fraction=0.0 is not allowed: a number strictly between 0 and 1"),
    # numpy takes a 32-bit split seed: 5e19 once failed as a bad dataset.test_fraction
    (["dataset.split_seed=5e19"], "dataset.split_seed=5e+19 is not allowed: a whole number from 0 to 4294967295 "
                                  "(numpy's 32-bit seed)"),
    (["dataset.split_seed=4294967296"], "dataset.split_seed=4294967296 is not allowed: a whole number from 0 to "
                                        "4294967295 (numpy's 32-bit seed)"),
    # a key the dataset's schema lacks (mnist has its own test set)
    (["dataset=mnist", "+dataset.test_fraction=0.1"],
     "dataset.test_fraction=0.1: unknown key; dataset takes balanced_sampler, class_names, class_weights, data_dir, "
     "download, image_size, in_channels, loader, mean, name, num_classes, preprocess, shuffle_labels, split_seed, std, "
     "train_subset, val_fraction, workers, zca_epsilon"),
    (["optimizer=lookahead", "optimizer.k=0"],
     "optimizer.k=0 is not allowed: a whole number >= 1 (fast steps between slow-weight updates)"),
    (["regularization=[dropout]", "regularization.dropout.p=1.0"], "regularization.dropout.p=1.0 is not allowed: a number in [0, 1)"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not allowed: auto, cpu, cuda, cuda:N or mps"),
    (["trainer.precision=8"], "trainer.precision=8 is not allowed: auto, 32, bf16 or 16"),
    (["trainer.monitor=val/accuracy"], "trainer.monitor='val/accuracy' is not allowed: val/acc, val/loss, train/acc, train/loss"),
    (["trainer.mode=maximum"], "trainer.mode='maximum' is not allowed: auto, max, min"),
    (["trainer.monitor=val/loss", "trainer.mode=max"],
     "trainer.mode='max' is not allowed with trainer.monitor='val/loss': a loss improves downwards; use min or auto"),
    (["regularization=[early_stopping]", "regularization.early_stopping.monitor=train/acc", "regularization.early_stopping.mode=min"],
     "regularization.early_stopping.mode='min' is not allowed with regularization.early_stopping.monitor='train/acc': "
     "an accuracy improves upwards; use max or auto"),
    (["norm.kind=foo"], "norm.kind='foo' is not allowed: batch, layer, group, instance, none, weight, spectral"),
    (["init=kaiming", "init.mode=fan"], "init.mode='fan' is not allowed: fan_in or fan_out"),
    (["model=mlp", "model.hidden=[0]"], "model.hidden=[0] is not allowed: a list of whole numbers >= 1 (one width per layer)"),
    (["activation=leaky_relu", "activation.negative_slope=abc"],
     "activation.negative_slope='abc' is not allowed: TypeError: leaky_relu(): argument 'negative_slope' (position 2) "
     "must be Number, not str"),
    (["schedule=step", "schedule.gamma=0"], "schedule.gamma=0 is not allowed: a number > 0"),
    (["optimizer=rmsprop", "optimizer.alpha=1.2"], "optimizer.alpha=1.2 is not allowed: a number in [0, 1)"),
    (["optimizer=lookahead", "optimizer/base=lbfgs"],
     "optimizer/base=lbfgs is not allowed: a wrapper (lookahead, ranger) moves the weights between L-BFGS steps, which "
     "corrupts the curvature pairs L-BFGS keeps; use optimizer=lbfgs on its own"),
    (["optimizer=lbfgs", "dataset.balanced_sampler=true"],
     "dataset.balanced_sampler=true is not allowed with optimizer=lbfgs: resampling the full batch every epoch changes "
     "the objective under L-BFGS; use dataset.class_weights=auto instead"),
    (["dataset.preprocess=whiten"], "dataset.preprocess='whiten' is not allowed: standardize, center, none, zca"),
    (["dataset.loader=gpu"], "dataset.loader='gpu' is not allowed: auto, device, workers"),
    (["norm=group", "norm.num_groups=7"], "norm.num_groups=7 is not allowed: must divide every layer width; 32 is not a multiple"),
    (["model=airbench", "model.whiten_kernel=0"], "model.whiten_kernel=0 is not allowed: a whole number >= 1"),
    (["model=airbench", "model.whiten_epsilon=0"], "model.whiten_epsilon=0 is not allowed: a number > 0"),
    (["model=airbench", "model.logit_scale=-0.1"], "model.logit_scale=-0.1 is not allowed: a number > 0"),
    (["model=airbench", "model.widths=[64,0]"], "model.widths=[64, 0] is not allowed: a list of whole numbers >= 1 (one width per layer)"),
    (["model=airbench", "model.whiten_kernel=9"], "model.whiten_kernel=9 is not allowed: a patch size up to the 8x8 images' side"),
    (["model=resnet", "model.depth=21"], "model.depth=21 is not allowed: 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)"),
    (["dataset=imagefolder"], "dataset=imagefolder needs dataset.root: a folder with train/<class>/ sub-folders "
                              "(and optionally val/ and test/), or with one sub-folder of images per class"),
    (["dataset=imagefolder", "dataset.root=/nonexistent"], "dataset.root='/nonexistent': /nonexistent is not a folder; put one "
                                                         "sub-folder of images per class there (or train/<class>/, val/<class>/, test/<class>/)"),
    (["dataset=imagefolder", "dataset.root=/nonexistent", "dataset.resize=squash"],
     "dataset.resize='squash' is not allowed: center_crop, stretch"),
    (["dataset=mnist", "dataset.data_dir=/nonexistent", "dataset.download=false"],
     "dataset=mnist: could not read the files in /nonexistent/MNIST/raw (dataset.download is false: Dataset not found. You can "
     "use download=True to download it); put the unpacked idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
     "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there, or set dataset.data_dir (or TRAINKIT_DATA_DIR) to the folder "
     "that holds MNIST/raw"),
    (["augmentation.train=[{_target_: albumentations.HorizontalFlip, q: 2}]"],
     "augmentation.train[0].q=2: unknown key for albumentations.HorizontalFlip; allowed: p"),
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
    (["resume=mlp_run"], "resume=mlp_run/checkpoints/last.pt is not allowed: that run completed its 1 epochs, so nothing "
                         "is left to resume (a larger trainer.epochs extends a run whose schedule has no planned length)"),
    (["resume=mlp_run", "trainer.monitor=val/loss"],
     "trainer.monitor='val/loss' is not allowed on resume: the run in mlp_run/checkpoints/last.pt was trained with "
     "trainer.monitor='val/acc', and a resumed run continues the same training; start a new run to change it"),
    (["resume=loose.pt", "hydra.run.dir=mlp_run_copy"],
     "hydra.run.dir='mlp_run_copy' already holds a run; choose another folder, or continue that run with resume=mlp_run_copy"),
    (["-m", "optimizer=sgd,adam", "hydra.sweep.dir=old_sweep"],
     "hydra.sweep.dir='old_sweep' already holds a sweep; choose another folder (by default each sweep gets a new one)"),
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
     "schedule.warmup_epochs=20 is not allowed: fewer epochs than the run's trainer.epochs=2: the warmup must end "
     "before the run does"),
    (["schedule.warmup_steps=50", "trainer.epochs=2"],
     "a warmup of 50 steps is not allowed in a run of 42 steps (2 epochs x 21): lower schedule.warmup_epochs or "
     "schedule.warmup_steps"),
    (["optimizer=nesterov", "optimizer.momentum=0"],
     "optimizer (torch.optim.SGD): Nesterov momentum requires a momentum and zero dampening"),
    (["resume=auto", "-m", "optimizer=sgd,adam"], "resume=auto is not allowed with -m: resume one run at a time"),
    (["hydra.run.dir=mlp_run"], "hydra.run.dir='mlp_run' already holds a run; choose another folder, or continue that run "
                                "with resume=mlp_run"),
    # issue 9: data (imagefolder cases, which need special folders, are in tests/test_datasets.py)
    (["dataset.std=[0]"], "dataset.std=[0] is not allowed: null or one number in (0, 1] per channel, for pixels scaled to [0, 1]"),
    (["dataset=cifar10", "dataset.mean=[0.5]"], "dataset.mean=[0.5] is not allowed: 3 values, one per channel "
                                                "(dataset.in_channels=3)"),
    (["dataset.std=null"], "dataset.std=null is not allowed with dataset.mean=[0.3053]: give both, or leave both null to "
                           "compute them from the training images"),
    (["dataset.num_classes=5"], "dataset.num_classes=5 is not allowed: the digits labels run from 0 to 9, so it needs at "
                                "least 10 classes"),
    (["dataset=mnist", "dataset.data_dir=mlp_run/metrics.json"],
     "dataset.data_dir='mlp_run/metrics.json' is not allowed: WORKDIR/mlp_run/metrics.json is a file, not a folder "
     "(torchvision reads the folder MNIST/raw in it)"),
    # issue 9: CLI and start-up
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] is not allowed: two numbers in [0, 1): [beta1, beta2], the decay "
                                "rates of the gradient's running mean and square"),
    (["trainer.seed=100000000000000"], "trainer.seed=100000000000000 is not allowed: a whole number from 0 to "
                                       "18446688733642 (torch's 64-bit seed holds seed x 1000003 + epoch)"),
    (["~logger"], "~logger is not allowed: every run reads logger; choose one of its options instead (logger=tensorboard)"),
    (["~trainer.epochs"], "~trainer.epochs is not allowed: every run reads trainer.epochs; set its value instead "
                          "(trainer.epochs=...)"),
    (["activation._target_=os.system"],
     "activation: these settings cannot be built: InstantiationException: Target 'os.system' is blocklisted because it "
     "allows config data to control executable behavior or belongs to an execution-capable target family. It cannot be "
     "authorized with HYDRA_INSTANTIATE_ALLOWLIST_OVERRIDE."),
    (["dataset=imagefolder", "dataset.root=my", "dir"],  # the shell split an unquoted space
     "dir: not an override (key=value); if it is the rest of a value with a space in it, quote the value: "
     "'dataset.root=\"my dir\"'"),
    (["dataset=imagefolder", "dataset.root=my dir/é"],
     "dataset.root=my dir/é: Hydra cannot read spaces or non-ASCII characters unquoted; write it as "
     "'dataset.root=\"my dir/é\"'"),
    (["dataset=imagefolder", "dataset.root=runs_é/r1"],
     "dataset.root=runs_é/r1: Hydra cannot read spaces or non-ASCII characters unquoted; write it as "
     "'dataset.root=\"runs_é/r1\"'"),
    (["paths.output_root=a#b"], "paths.output_root=a#b: Hydra cannot read '#' unquoted; write it as 'paths.output_root=\"a#b\"'"),
    (["--cfg", "job", "optimizer=adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["--cfg", "job", "optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: a number > 0"),
    # issue 9: resume and run folders
    # best.pt is older than the run: it continues into a new folder, never into the run's own.
    (["resume=mlp_run/checkpoints/best.pt", "hydra.run.dir=mlp_run"],
     "hydra.run.dir='mlp_run' already holds a run; choose another folder, or continue that run with resume=mlp_run"),
    (["resume=rolled_back"],
     "resume=rolled_back/checkpoints/last.pt is not allowed: it holds epoch 1 but the run reached epoch 5 (metrics.json), "
     "so continuing it in place would move the run back; put the run's own last.pt back, or copy this file out of the "
     "run folder to start a new run from it"),
    # A run folder is data: what its files name is never called (the fixture's targets would write ./pwned).
    (["resume=pwned_run"],
     "resume=pwned_run: activation._target_=builtins.open comes from its .hydra/overrides.yaml, and a run folder is data, "
     "not code: a target from it must be trainkit's own, or a trainkit, torch, torchvision or albumentations class of a "
     "kind trainkit builds (module, optimizer, LR scheduler, augmentation); if you trust it, type that override yourself: "
     "trainkit train resume=pwned_run activation._target_=builtins.open"),
    (["resume=embedded_run"],
     "resume=embedded_run: augmentation.train.0._target_=builtins.open comes from its .hydra/overrides.yaml, and a run "
     "folder is data, not code: a target from it must be trainkit's own, or a trainkit, torch, torchvision or "
     "albumentations class of a kind trainkit builds (module, optimizer, LR scheduler, augmentation); if you trust it, "
     "type that override yourself: trainkit train resume=embedded_run "
     "'augmentation.train=[{_target_: builtins.open, file: pwned, mode: w}]'"),
    (["resume=hub_run"],
     "resume=hub_run: activation._target_=torch.hub.load comes from its .hydra/overrides.yaml, and a run folder is data, "
     "not code: a target from it must be trainkit's own, or a trainkit, torch, torchvision or albumentations class of a "
     "kind trainkit builds (module, optimizer, LR scheduler, augmentation); if you trust it, type that override yourself: "
     "trainkit train resume=hub_run activation._target_=torch.hub.load"),
    (["resume=hydra_run"],
     "resume=hydra_run: its .hydra/overrides.yaml sets +hydra.callbacks.pwn._target_=builtins.open, a setting of Hydra "
     "itself, which a run folder may not (it is data, not code); if you trust it, type it yourself: trainkit train "
     "resume=hydra_run +hydra.callbacks.pwn._target_=builtins.open"),
    (["resume=config_dir_run"],
     "resume=config_dir_run: activation._target_=builtins.open comes from the config folder WORKDIR/evil_configs that its "
     ".hydra/hydra.yaml records, and a run folder is data, not code: a target from it must be trainkit's own, or a "
     "trainkit, torch, torchvision or albumentations class of a kind trainkit builds (module, optimizer, LR scheduler, "
     "augmentation); if you trust that folder, pass it yourself: --config-dir=WORKDIR/evil_configs"),
    (["resume=config_name_run"],
     "resume=config_name_run: the config folder WORKDIR/evil_configs that its .hydra/hydra.yaml records changes Hydra's "
     "own setting hydra.job.env_set.PWNED, which a run folder may not (it is data, not code); if you trust that folder, "
     "pass it yourself: --config-dir=WORKDIR/evil_configs"),
    # resume=auto with nothing to resume is a new run: its named folder is checked (and claimed) before Hydra writes.
    (["resume=auto", "hydra.run.dir=mlp_run"],
     "hydra.run.dir='mlp_run' already holds a run; choose another folder, or continue that run with resume=mlp_run"),
    # Nonsense that used to start a run somewhere unexpected.
    (["resume="], "resume= is not allowed: it is empty (an unset shell variable?); give a run folder, a checkpoint file "
                  "or auto, or leave resume= out to start a new run"),
    (["hydra.run.dir="], "hydra.run.dir='' is not allowed: an empty folder puts the run's files into the folder trainkit "
                         "was started in; name a folder, or leave hydra.run.dir out for a new one under outputs"),
    (["-m", "optimizer=sgd,adam", "hydra.sweep.dir="],
     "hydra.sweep.dir='' is not allowed: an empty folder puts the run's files into the folder trainkit was started in; "
     "name a folder, or leave hydra.sweep.dir out for a new one under outputs"),
    (["task_name=../../escaped"], "task_name='../../escaped' is not allowed: it is part of the run folder's name "
                                  "(<time>_<task_name>), so it cannot hold '/' (it would put the run elsewhere); use a "
                                  "plain name such as my_run"),
    ([f"task_name={'a' * 300}"], f"task_name='{'a' * 24}…' (300 characters) is not allowed: the run folder's name it "
                                 "makes is 327 bytes and the file system allows 255; use a shorter task_name"),
    # A checkpoint with nothing left to train, or with NaN weights, starts no "completed" run.
    (["resume=loose.pt", "model=mlp", "trainer.epochs=1"],
     "resume=loose.pt is not allowed: it has trained all 1 epochs (trainer.epochs=1), so a new run from it would have "
     "nothing to train; its schedule (cosine) is planned for that length, so it cannot be extended: start a new run"),
    # issue 13: transfer learning, weight averaging, checkpoints kept
    (["finetune=last_n", "finetune.n=9"],
     "finetune.n=9 is not allowed: a whole number from 1 to 4: the model has 4 blocks below its head (classifier), "
     "from features.0.0 to features.4.0"),
    (["model.weights_path=mlp_run/checkpoints/best.pt"],
     "model.weights_path=mlp_run/checkpoints/best.pt: the weights are of another architecture than this model: missing "
     "24 tensors (e.g. features.0.0.weight, features.0.1.weight, features.0.1.bias); 12 tensors the model does not have "
     "(e.g. features.1.weight, features.2.weight, features.2.bias)"),
    (["model=torchvision", "model.name=resnet19"],
     f"model.name='resnet19' is not allowed: a torchvision.models classifier (did you mean resnet18?): {TORCHVISION}"),
    (["model.from_run=old_sweep"], "model.from_run='old_sweep' is not allowed: the folder of a trainkit run with a "
                                   "checkpoint (checkpoints/best.pt or last.pt); old_sweep has none"),
    (["model=torchvision", "model.name=vit_b_16"],
     "model.name='vit_b_16' is not allowed: an architecture that takes 1x8x8 images; vit_b_16 fails on them (Input shape "
     "indivisible by patch size!)"),
    (["model=torchvision", "model.weights=IMAGENET"],
     "model.weights='IMAGENET' is not allowed: one of ResNet18_Weights's members: IMAGENET1K_V1, DEFAULT (or null for "
     "random weights)"),
    (["finetune=full", "finetune.lr_decay=0"], "finetune.lr_decay=0.0 is not allowed: a number in (0, 1]"),
    (["regularization=[swa]", "regularization.swa.start=20", "trainer.epochs=5"],
     "regularization.swa.start=20 is not allowed: an epoch of the run (1 .. trainer.epochs=5), or a fraction of it such as 0.75"),
    (["regularization=[ema]", "regularization.ema.decay=1.5"],
     "regularization.ema.decay=1.5 is not allowed: a number strictly between 0 and 1"),
    (["checkpoint.save_top_k=0"], "checkpoint.save_top_k=0 is not allowed: a whole number >= 1, or -1 (every epoch)"),
    (["dataset.train_subset=5000"],
     "dataset.train_subset=5000 is not allowed: at most the 1293 training images this split has (or null for all)"),
    (["dataset.train_subset=5"], "dataset.train_subset=5 is not allowed: at least one image per class (10 classes)"),
    (["resume=nan.pt", "trainer.epochs=2"],
     "checkpoint nan.pt: its weights hold NaN or Inf (1 tensors, e.g. features.1.weight), so no run can continue from "
     "them; resume from an earlier checkpoint (best.pt is never saved from a diverged epoch) or start a new run"),
    # issue 14: DDP (this machine has no CUDA: gloo, one process per core at most)
    ([f"trainer.devices={CORES + 1}"], f"trainer.devices={CORES + 1} is not allowed: 1 to {CORES} (the CPU cores (gloo) here)"),
    (["trainer.devices=0"], "trainer.devices=0 is not allowed: a whole number >= 1"),
    (["trainer.devices=2", "optimizer=lbfgs"], "trainer.devices=2 is not allowed: 1 with optimizer=lbfgs: its line "
                                               "search needs the loss of the whole batch at every evaluation, which one process has"),
    (["trainer.devices=2", "trainer.batch_size=63"],
     "trainer.batch_size=63 is not allowed: a multiple of the 2 processes: it is the global batch, split evenly over them"),
    (["-m", "trainer.devices=2", "optimizer=sgd,adam"], "trainer.devices=2 is not allowed: 1 with -m: a sweep's jobs are "
                                                         "single processes; run one `trainkit train trainer.devices=N` per configuration"),
    (["trainer.sync_bn=true", "norm=group"], "trainer.sync_bn=true is not allowed with norm=group: it turns BatchNorm layers "
                                             "into SyncBatchNorm; use norm=batch, or trainer.sync_bn=false"),
    (["-m", "hydra/launcher=slurm_local", "hydra.launcher.timeout_min=-1", "optimizer=sgd,adam"],
     "hydra.launcher.timeout_min=-1 is not allowed: a whole number >= 1"),
    (["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=-1", "optimizer=sgd,adam"],
     "hydra.launcher.gpus_per_node=-1 is not allowed: null or a whole number >= 0"),
    (["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=0", "optimizer=sgd,adam"],
     "hydra.launcher.n_jobs=0 is not allowed: a whole number >= 1, or -1 (one job per core)"),
    (["trainer.sync_bn=true", "trainer.devices=2"], "trainer.sync_bn=true is not allowed: SyncBatchNorm needs CUDA (torch has "
                                                    "no CPU version); use trainer.sync_bn=false on CPU"),
    # Speed knobs (issue 14) and optimizer=muon's own arguments.
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not allowed: a whole number >= 1"),
    (["trainer.compile_mode=fast"], "trainer.compile_mode='fast' is not allowed: default, reduce-overhead, max-autotune, "
                                    "max-autotune-no-cudagraphs"),
    (["trainer.threads=0"], "trainer.threads=0 is not allowed: null or a whole number >= 1"),
    (["trainer.pin_memory=always"], "trainer.pin_memory='always' is not allowed: auto, true, false"),
    (["trainer.precision=16"], "trainer.precision='16' is not allowed: fp16 mixed precision needs a CUDA device; use 32, "
                               "bf16 or auto"),
    (["optimizer.foreach=true", "optimizer.fused=true"], "optimizer (torch.optim.Adam): `fused` and `foreach` cannot be "
                                                         "`True` together."),
    (["optimizer=muon", "optimizer.ns_steps=0"], "optimizer.ns_steps=0 is not allowed: a whole number >= 1"),
    (["optimizer=muon", "optimizer.adamw_betas=[0.9,1.5]"],
     "optimizer.adamw_betas=[0.9, 1.5] is not allowed: two numbers in [0, 1): [beta1, beta2], the decay rates of the "
     "gradient's running mean and square"),
    (["optimizer=muon", "optimizer.adjust_lr_fn=rms"], "optimizer.adjust_lr_fn='rms' is not allowed: null, original, "
                                                       "match_rms_adamw, spectral_unclamped"),
]


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# issue 14: a process with torchrun's variables, set by hand (some of them), or by torchrun for a command that
# cannot run as a DDP run's processes (this one process is rank 0 of a world of 1).
TORCHRUN = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
ENV_CASES = [
    ({"RANK": "1", "WORLD_SIZE": "2"}, ["train"],
     "RANK, WORLD_SIZE set but not LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: this looks like one process of "
     "a torchrun launch started without torchrun; start several processes with `trainkit train trainer.devices=N` or "
     "`torchrun --nproc-per-node=N -m trainkit train ...`"),
    (TORCHRUN, ["lr-find"], "trainkit lr-find is not allowed under torchrun: it runs in one process; start it without "
                            "torchrun (only `trainkit train` runs as the processes of a DDP run)"),
    (TORCHRUN, ["train", "-m", "optimizer=sgd,adam"], "-m is not allowed under torchrun: a sweep's jobs are single "
                                                      "processes; start the sweep without torchrun, or one torchrun per configuration"),
]


@pytest.mark.parametrize("env,args,message", ENV_CASES, ids=[" ".join([*e, *a]) for e, a, _ in ENV_CASES])
def test_bad_torchrun_launch_is_one_line_and_exit_code_2(tmp_path, env, args, message):
    result = run_trainkit(*args, cwd=tmp_path, env={**env, "MASTER_PORT": free_port()} if env is TORCHRUN else env)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n"), result.stdout
    assert not any(tmp_path.iterdir())  # nothing written


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one finished small run and three broken checkpoint files."""
    cwd = tmp_path_factory.mktemp("bad")
    result = run_trainkit("train", "trainer.epochs=1", "model=mlp", "hydra.run.dir=mlp_run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    shutil.copytree(cwd / "mlp_run", cwd / "mlp_run_copy")  # another run's folder, which a loose .pt must not enter
    shutil.copy(cwd / "mlp_run" / "checkpoints" / "best.pt", cwd / "loose.pt")
    (cwd / "old_sweep" / "0" / ".hydra").mkdir(parents=True)  # a sweep's job folder
    (cwd / "typo_configs" / "optimizer").mkdir(parents=True)  # a user's own option with a misspelt knob
    (cwd / "typo_configs" / "optimizer" / "typo_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\nlrr: 0.2\n")
    (cwd / "typo_configs" / "optimizer" / "broken.yaml").write_text("defaults:\n  - sgd\nlr: 0.1\nbetas: [0.9, 0.99\n")
    data = (cwd / "mlp_run" / "checkpoints" / "last.pt").read_bytes()
    (cwd / "trunc.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": FORMAT, "model": Exploit(), "epoch": 0, "global_step": 0, "config": {}}, cwd / "evil.pt")
    torch.save({"state_dict": {}}, cwd / "foreign.pt")
    issue_9_fixtures(cwd)
    return cwd


def issue_9_fixtures(cwd: Path) -> None:
    """Run folders edited as an attacker (or an accident) would: each target, if called, writes ./pwned."""
    def run_copy(name: str, *extra_overrides: str) -> Path:
        shutil.copytree(cwd / "mlp_run", cwd / name)
        overrides = cwd / name / ".hydra" / "overrides.yaml"
        overrides.write_text(overrides.read_text() + "".join(f"- '{o}'\n" for o in extra_overrides))
        return cwd / name

    run_copy("pwned_run", "activation._target_=builtins.open", "+activation._args_=[pwned,w]")
    run_copy("embedded_run", "augmentation.train=[{_target_: builtins.open, file: pwned, mode: w}]")
    run_copy("hub_run", "activation._target_=torch.hub.load")
    run_copy("hydra_run", "+hydra.callbacks.pwn._target_=builtins.open", "+hydra.callbacks.pwn._args_=[pwned,w]")
    evil = cwd / "evil_configs"
    (evil / "activation").mkdir(parents=True)
    (evil / "activation" / "evil.yaml").write_text("_target_: builtins.open\n_args_: [pwned, w]\n")
    (evil / "evil_train.yaml").write_text("defaults:\n  - train\n  - _self_\nhydra:\n  job:\n    env_set:\n      PWNED: '1'\n")
    for name, extra, config_name in (("config_dir_run", ["activation=evil"], "train"), ("config_name_run", [], "evil_train")):
        folder = run_copy(name, *extra)
        record = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())
        record["hydra"]["runtime"]["config_sources"].insert(2, {"path": str(evil), "schema": "file", "provider": "command-line"})
        record["hydra"]["job"]["config_name"] = config_name
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    rolled_back = run_copy("rolled_back")  # its last.pt replaced by an older one: metrics.json says it got further
    record = json.loads((rolled_back / "metrics.json").read_text())
    (rolled_back / "metrics.json").write_text(json.dumps({**record, "status": "interrupted", "epochs_run": 5}))
    payload = torch.load(cwd / "loose.pt", weights_only=True)
    payload["model"]["features.1.weight"][0, 0] = float("nan")
    torch.save(payload, cwd / "nan.pt")


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_code_2(workdir, args, message):
    before = snapshot(workdir)
    result = run_trainkit("train", *args, cwd=workdir, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    run_name = re.search(r"/runs/([^/']+)'", result.stderr)  # a timestamped folder name
    message = message.replace("WORKDIR", str(workdir)).replace("RUN", run_name.group(1) if run_name else "RUN")
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.stdout
    assert snapshot(workdir) == before  # no run folder, no checkpoint touched
    assert not (workdir / "pwned").exists()


def test_compile_without_a_compiler_is_refused_before_the_run(tmp_path):
    """trainer.compile=true where inductor cannot build kernels (no C++ compiler for the CPU): refused
    before the run, not minutes in at the first compiled call."""
    result = run_trainkit("train", "trainer.compile=true", "hydra.run.dir=run", cwd=tmp_path,
                          env={"CXX": str(tmp_path / "no-such-g++")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == ("error: trainer.compile=true is not allowed here: torch.compile on the CPU needs a C++ compiler, "
                             f"and {str(tmp_path / 'no-such-g++')!r} ($CXX, else g++) is not found; use trainer.compile=false\n")
    assert not (tmp_path / "run").exists()


def test_unknown_command(tmp_path):
    result = run_trainkit("trian", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("error: trainkit trian: unknown command; the commands are train, preview, check, lr-find, eval, "
                             "ensemble, predict, export, runs, compare, report, refine (trainkit --help)\n")
