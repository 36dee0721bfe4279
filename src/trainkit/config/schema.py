"""The schema of every config group without a `_target_`: Hydra structured configs.

Each dataclass is registered in Hydra's ConfigStore under a root-level name, and the group's
YAML files name it first in their defaults list:

    defaults:
      - /trainer_schema@_here_
      - _self_

OmegaConf then refuses a key the dataclass lacks and a value of the wrong type while composing,
naming the full key (trainer.epochs). Each field carries its rule (`ruled(whole(1))`, see
config/rules.py); config/check.py applies the rules to the composed config, and code that is
handed a node directly (Regularizers, EarlyStopping) applies them with the same `validated`.
Fields have no defaults: the YAML gives each value and its comment, the dataclass its type and rule.

To add a key to a plain group: a field here with its type and rule, and the key with its comment
in the group's YAML files. A new plain group: a dataclass here, a line in SCHEMAS (and in
`register`), its YAML files naming `/<group>_schema@_here_`, and a field in RootConfig.
A value that can be several types (auto or a number) is typed Any: the rule checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from trainkit.config.rules import (above, device_name, fraction_open, fraction_up_to_one, in_unit_interval_half_open, joblib_jobs,
                                   nested, non_negative, norm_order, one_of, optional, pixel_means, pixel_stds, positive,
                                   precision, probability, rule, ruled, seed, split_seed, whole)
from trainkit.metrics import MODES, MONITORABLE

yes_or_no = one_of(True, False)
channels = one_of(1, 3, words="1 (grey) or 3 (RGB)")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes
auto_or_whole = rule("auto or a whole number >= 0")(lambda v: v == "auto" or whole(0)(v))
epochs_or_fraction = rule("a whole number of epochs >= 1, or a fraction of the run in (0, 1)")(
    lambda v: whole(1)(v) or fraction_open(v))
top_k = rule("a whole number >= 1, or -1 (every epoch)")(lambda v: v == -1 or whole(1)(v))


@dataclass
class TrainerConfig:
    epochs: int = ruled(whole(1))
    batch_size: int = ruled(whole(1))
    eval_batch_size: int = ruled(whole(1))
    device: str = ruled(device_name)
    precision: Any = ruled(precision)  # 32 or bf16: a number or a word
    seed: int = ruled(seed)
    monitor: str = ruled(one_of(*MONITORABLE))
    mode: str = ruled(one_of(*MODES))
    on_nan: str = ruled(one_of("stop", "skip"))
    log_every_n_steps: int = ruled(whole(1))
    limit_train_batches: Optional[int] = ruled(optional(whole(1)))
    limit_val_batches: Optional[int] = ruled(optional(whole(1)))
    limit_test_batches: Optional[int] = ruled(optional(whole(1)))
    overfit_batches: Optional[int] = ruled(optional(whole(1)))
    fast_dev_run: bool = ruled(yes_or_no)
    progress: Any = ruled(one_of("auto", True, False))
    devices: int = ruled(whole(1))  # DDP processes; how many this machine has: cli/launch.check_devices
    sync_bn: bool = ruled(yes_or_no)  # needs norm=batch: config/check.check_sync_bn_has_batch_norm
    # Speed (issue 14): how fast, not what is computed.
    accumulate_grad_batches: int = ruled(whole(1))
    channels_last: bool = ruled(yes_or_no)
    compile: bool = ruled(yes_or_no)
    compile_mode: str = ruled(one_of(*COMPILE_MODES))
    cudnn_benchmark: bool = ruled(yes_or_no)
    pin_memory: Any = ruled(one_of("auto", True, False))
    threads: Optional[int] = ruled(optional(whole(1)))


@dataclass
class DatasetConfig:
    """The torchvision datasets' keys; the other datasets add theirs below."""

    name: str = ruled()
    data_dir: Optional[str] = ruled()
    download: bool = ruled(yes_or_no)
    val_fraction: float = ruled(fraction_open)
    split_seed: int = ruled(split_seed)
    in_channels: Optional[int] = ruled(optional(channels))
    image_size: Optional[int] = ruled(optional(whole(1)))
    num_classes: Optional[int] = ruled(optional(whole(2)))
    class_names: Any = ruled()
    mean: Any = ruled(optional(pixel_means))
    std: Any = ruled(optional(pixel_stds))
    preprocess: str = ruled(one_of("standardize", "center", "none", "zca"))
    zca_epsilon: float = ruled(positive)
    loader: str = ruled(one_of("auto", "device", "workers"))
    workers: Any = ruled(auto_or_whole)  # DataLoader worker processes
    class_weights: Any = ruled(one_of(None, "auto"))
    balanced_sampler: bool = ruled(yes_or_no)
    shuffle_labels: bool = ruled(yes_or_no)  # the memorisation check: random training labels
    train_subset: Optional[int] = ruled(optional(whole(1)))  # little-data experiments: n stratified training images


@dataclass
class DigitsConfig(DatasetConfig):
    test_fraction: float = ruled(fraction_open)  # digits has no test set of its own


@dataclass
class Stl10Config(DatasetConfig):
    cache_dir: Optional[str] = ruled()  # its mean/std are computed


@dataclass
class ImageFolderConfig(DatasetConfig):
    in_channels: int = ruled(channels)  # how the images are read
    root: str = ruled()
    test_fraction: float = ruled(fraction_open)
    resize: str = ruled(one_of("center_crop", "stretch"))
    cache_dir: Optional[str] = ruled()


@dataclass
class AugmentationConfig:
    train: Any = ruled()  # lists of albumentations _target_ nodes, checked against their signatures
    eval: Any = ruled()


@dataclass
class TensorBoardConfig:
    enabled: bool = ruled(yes_or_no)
    image_grid: int = ruled(whole(0))


@dataclass
class LoggerConfig:
    tensorboard: TensorBoardConfig = nested(TensorBoardConfig)


@dataclass
class PathsConfig:
    data_dir: Optional[str] = ruled()
    output_root: Optional[str] = ruled()
    cache_dir: Optional[str] = ruled()


@dataclass
class CheckpointConfig:
    save_top_k: int = ruled(top_k)


@dataclass
class FinetuneConfig:
    """Which blocks of a pretrained model train (components/transfer.py)."""

    mode: str = ruled(one_of("linear_probe", "last_n", "full"))
    n: int = ruled(whole(1))  # at most the model's blocks below the head: checked when the model is built
    lr_decay: float = ruled(fraction_up_to_one)
    freeze_bn: bool = ruled(yes_or_no)


@dataclass
class LrFindConfig:
    start_lr: float = ruled(positive)
    end_lr: float = ruled(positive)
    steps: int = ruled(whole(3))
    smoothing: float = ruled(in_unit_interval_half_open)
    diverge: float = ruled(above(1))


@dataclass
class DiagnosticsConfig:
    """Start-of-run checks, monitors, the end-of-run diagnosis and the LR range test (issue 11)."""

    sanity: bool = ruled(yes_or_no)
    sanity_images: int = ruled(whole(1))
    initial_loss_tolerance: float = ruled(positive)
    class_imbalance: float = ruled(above(1))
    monitor: bool = ruled(yes_or_no)
    histograms: bool = ruled(yes_or_no)
    vanishing_ratio: float = ruled(fraction_open)
    exploding_growth: float = ruled(above(1))
    dead_fraction: float = ruled(fraction_open)
    update_ratio_low: float = ruled(positive)
    update_ratio_high: float = ruled(positive)
    diagnosis: bool = ruled(yes_or_no)
    overfit_gap: float = ruled(fraction_open)
    underfit_acc: float = ruled(fraction_open)
    spike: float = ruled(above(1))
    slow_progress: float = ruled(fraction_open)
    lr_find: LrFindConfig = nested(LrFindConfig)


# -- regularization: each entry of the list group is its own node ----------------------------------

@dataclass
class L2Config:
    weight_decay: float = ruled(non_negative)
    coupling: str = ruled(one_of("optimizer", "loss"))


@dataclass
class L1Config:
    weight: float = ruled(non_negative)


@dataclass
class ElasticNetConfig:
    l1: float = ruled(non_negative)
    beta: float = ruled(non_negative)


@dataclass
class DropoutConfig:
    p: float = ruled(in_unit_interval_half_open)


@dataclass
class LabelSmoothingConfig:
    epsilon: float = ruled(in_unit_interval_half_open)


@dataclass
class MixupConfig:
    alpha: float = ruled(positive)  # Beta(alpha, alpha) draws the mixing weight


@dataclass
class CutmixConfig:
    alpha: float = ruled(positive)
    switch_prob: float = ruled(probability)


@dataclass
class EarlyStoppingConfig:
    monitor: str = ruled(one_of(*MONITORABLE))
    mode: str = ruled(one_of(*MODES))
    patience: int = ruled(whole(1))
    min_delta: float = ruled(non_negative)


@dataclass
class GradClipConfig:
    by: str = ruled(one_of("norm", "value"))
    max_norm: float = ruled(positive)
    norm_type: Any = ruled(norm_order)  # inf: a float from the command line, the string 'inf' in YAML
    value: float = ruled(positive)


@dataclass
class EmaConfig:
    decay: float = ruled(fraction_open)
    warmup: bool = ruled(yes_or_no)
    warmup_gamma: float = ruled(positive)
    warmup_power: float = ruled(positive)
    min_decay: float = ruled(in_unit_interval_half_open)
    update_after_step: int = ruled(whole(0))


@dataclass
class SwaConfig:
    start: Any = ruled(epochs_or_fraction)  # an epoch or a fraction of the run: a number of either type
    lr: Optional[float] = ruled(optional(positive))
    anneal_epochs: int = ruled(whole(0))
    anneal_strategy: str = ruled(one_of("cos", "linear"))


@dataclass
class SnapshotsConfig:
    every_n_epochs: Optional[int] = ruled(optional(whole(1)))  # null: at each cosine_restarts cycle end


# The callbacks list group's entries (callbacks=[snapshots]), as the regularization entries.
CALLBACKS: dict[str, type] = {"snapshots": SnapshotsConfig}

REGULARIZATION: dict[str, type] = {
    "l2": L2Config, "l1": L1Config, "elastic_net": ElasticNetConfig, "dropout": DropoutConfig,
    "label_smoothing": LabelSmoothingConfig, "mixup": MixupConfig, "cutmix": CutmixConfig,
    "early_stopping": EarlyStoppingConfig, "grad_clip": GradClipConfig, "ema": EmaConfig, "swa": SwaConfig,
}


@dataclass
class LauncherConfig:
    """hydra.launcher (configs/hydra/launcher/): the values Hydra's joblib and submitit launchers accept but
    fail on later, once the sweep has started. Not a stored schema (the plugins have their own): each launcher
    holds some of these keys, and preflight.check_launcher applies the rules of those it holds."""

    n_jobs: int = ruled(joblib_jobs)
    timeout_min: int = ruled(whole(1))
    gpus_per_node: Optional[int] = ruled(optional(whole(0)))
    cpus_per_task: Optional[int] = ruled(optional(whole(1)))
    mem_gb: Optional[int] = ruled(optional(whole(1)))
    nodes: int = ruled(whole(1))
    tasks_per_node: int = ruled(whole(1))
    array_parallelism: int = ruled(whole(1))
    signal_delay_s: int = ruled(whole(0))
    max_num_timeout: int = ruled(whole(0))


@dataclass
class RootConfig:
    """train.yaml's top level: its own two keys and one node per group (each group has its schema)."""

    task_name: Any = ruled()
    resume: Any = ruled()
    dataset: Any = ruled()
    augmentation: Any = ruled()
    model: Any = ruled()
    norm: Any = ruled()
    activation: Any = ruled()
    init: Any = ruled()
    trainer: Any = ruled()
    schedule: Any = ruled()
    optimizer: Any = ruled()
    regularization: Any = ruled()
    logger: Any = ruled()
    paths: Any = ruled()
    diagnostics: Any = ruled()
    checkpoint: Any = ruled()
    callbacks: Any = dataclasses.field(default_factory=dict)  # optional: configs written before it have none
    finetune: Any = None  # optional: null unless picked (finetune=linear_probe)


@dataclass
class PreviewConfig(RootConfig):
    """`trainkit preview` (preview.yaml): train.yaml plus where the PNG goes and how many images."""

    out: Any = ruled()
    n: Any = ruled(whole(1))


ROOT_KEYS = tuple(f.name for f in dataclasses.fields(RootConfig) if f.name not in ("callbacks", "finetune"))
# The schema of each plain group; a node of a dataset a user wrote without naming a schema gets
# the widest one (every dataset key).
SCHEMAS: dict[str, type] = {"trainer": TrainerConfig, "dataset": ImageFolderConfig, "augmentation": AugmentationConfig,
                            "logger": LoggerConfig, "paths": PathsConfig,
                            "diagnostics": DiagnosticsConfig, "checkpoint": CheckpointConfig, "finetune": FinetuneConfig}
STORED = {"train_schema": RootConfig, "preview_schema": PreviewConfig, "trainer_schema": TrainerConfig,
          "dataset_schema": DatasetConfig, "digits_dataset_schema": DigitsConfig, "stl10_dataset_schema": Stl10Config,
          "imagefolder_dataset_schema": ImageFolderConfig, "augmentation_schema": AugmentationConfig,
          "logger_schema": LoggerConfig, "paths_schema": PathsConfig, "diagnostics_schema": DiagnosticsConfig,
          "checkpoint_schema": CheckpointConfig, "finetune_schema": FinetuneConfig,
          **{f"{name}_regularization_schema": schema for name, schema in REGULARIZATION.items()},
          **{f"{name}_callback_schema": schema for name, schema in CALLBACKS.items()}}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (trainkit.configs imports this module, so any compose finds them)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in STORED.items():
        store.store(name=name, node=schema)


def typed(schema: type, node):
    """The node as an instance of its schema (a user's YAML that names no schema too)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def schema_of(node, group: str) -> type:
    """The schema a group's node was composed with, or the group's widest one."""
    from omegaconf import OmegaConf

    declared = OmegaConf.get_type(node)
    return declared if dataclasses.is_dataclass(declared) else SCHEMAS[group]
