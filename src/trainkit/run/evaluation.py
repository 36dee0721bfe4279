"""A loaded run evaluated on a split of its own dataset (or of a compatible one).

The images reach the model by the path its own test did: the run's recorded config builds the
data (same split, same eval augmentation, same loader), and the checkpoint's preprocessing
state normalizes them. So the test split without TTA gives the recorded test/acc exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from trainkit.engine.evaluation import Predictions
from trainkit.errors import UserError, allowed
from trainkit.run.load import LoadedRun

SPLITS = ("test", "val", "train")


@dataclass
class EvalData:
    loader: object
    to_device: object
    device: torch.device
    amp_dtype: torch.dtype | None
    dataset: str
    fingerprint: str  # a hash of the split's images and labels: ensemble members must share it
    close: object


@dataclass
class Measured:
    """One model's predictions on a split, and where they came from."""

    predictions: Predictions
    dataset: str
    device: torch.device
    views: int
    fingerprint: str

    @property
    def probabilities(self):
        """The softmax each image's prediction comes from: averaged over the TTA views when there are some."""
        return self.predictions.tta if self.predictions.tta is not None else self.predictions.plain


def check_top_k(value, num_classes: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise allowed("top_k", value, f"a whole number from 1 to the number of classes ({num_classes})")
    return min(value, num_classes)


def measure(loaded: LoadedRun, cfg: DictConfig) -> Measured:
    """`loaded`'s predictions on cfg.split (with cfg.tta), cfg being configs/eval.yaml composed."""
    from trainkit.data.tta import TestTimeAugmentation
    from trainkit.engine.evaluation import collect

    tta = TestTimeAugmentation(**OmegaConf.to_container(cfg.tta, resolve=True))
    tta.check_fits(loaded.spec.image_size)
    run_cfg = run_config(loaded, dataset_for(loaded, cfg))
    data = eval_data(loaded, run_cfg, str(cfg.split), str(cfg.device), cfg.batch_size)
    try:
        predictions = collect(loaded.model.to(data.device), data.loader, data.to_device, data.device, data.amp_dtype, tta)
    finally:
        data.close()
    return Measured(predictions, data.dataset, data.device, tta.view_count(loaded.spec.image_size), data.fingerprint)


def evaluate(loaded: LoadedRun, cfg: DictConfig) -> dict:
    """Everything `trainkit eval` reports, as one JSON-ready dict (predictions per image included)."""
    from trainkit.engine.evaluation import classification_report

    split = str(cfg.split)
    top_k = check_top_k(cfg.top_k, len(loaded.class_names))
    measured = measure(loaded, cfg)
    p = measured.predictions
    names, bins = loaded.class_names, int(cfg.bins)
    plain = {**classification_report(p.plain, p.labels, names, top_k, p.plain_pred, bins), "loss": p.plain_loss}
    with_tta = classification_report(p.tta, p.labels, names, top_k, bins=bins) if p.tta is not None else None
    tta = OmegaConf.to_container(cfg.tta, resolve=True)
    other = measured.dataset != loaded.dataset_name
    default_name = split + (f"_{measured.dataset}" if other else "") + ("" if tta["kind"] == "none" else f"_tta-{tta['kind']}")
    return {
        "name": str(cfg.name or default_name), "run": str(loaded.run_dir) if loaded.run_dir else None,
        "checkpoint": str(loaded.checkpoint), "epoch": loaded.epoch, "dataset": measured.dataset, "split": split,
        "device": str(measured.device), "tta": {**tta, "views": measured.views},
        "plain": plain, "with_tta": with_tta, "recorded": {} if other else recorded_figures(loaded, split),
        "predictions": {"label": p.labels.tolist(), "plain": p.plain_pred.tolist(),
                        "plain_confidence": p.plain.max(1).tolist(),
                        "tta": p.tta.argmax(1).tolist() if p.tta is not None else None},
    }


def dataset_for(loaded: LoadedRun, cfg: DictConfig) -> DictConfig | None:
    """The dataset to evaluate on: `dataset=<name>` composed fresh, or the run's own; then the
    `dataset.<key>=value` overrides applied to it (a key the dataset lacks is refused)."""
    chosen = cfg.get("dataset")
    dotted = list(cfg.get("dataset_overrides") or [])
    if chosen is None and not dotted:
        return None
    if chosen is not None:  # its ${paths...} interpolations resolved, as `trainkit train` would
        both = OmegaConf.create({"paths": OmegaConf.to_container(cfg.paths), "dataset": OmegaConf.to_container(chosen)})
        OmegaConf.resolve(both)
        base = both.dataset
    else:
        base = OmegaConf.create(loaded.config["dataset"])
    for override in dotted:
        key, _, value = override.lstrip("+~").partition("=")
        leaf = key.removeprefix("dataset.")
        parent, _, name = leaf.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if not isinstance(node, DictConfig) or name not in node.keys():  # `in node` is False for a ??? value
            raise UserError(f"{override}: there is no key '{key}' in the dataset config; dataset takes "
                            f"{', '.join(sorted(str(k) for k in base))}")
        OmegaConf.update(base, leaf, _yaml_value(value), merge=False)
    return base


def _yaml_value(text: str):
    """An override's value as Hydra would type it (5 -> int, [1,2] -> list, null -> None)."""
    import yaml

    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text


def recorded_figures(loaded: LoadedRun, split: str) -> dict:
    """What the run recorded for this split: metrics.json's test figures, the checkpoint's val ones."""
    from trainkit.run.record import RunRecord

    if split == "test" and loaded.run_dir is not None and loaded.checkpoint.name == "best.pt":  # what the run tested
        record = RunRecord.read(loaded.run_dir) or {}
        return {k: v for k, v in (record.get("test") or {}).items() if k.startswith("test/")}
    if split == "val":
        return {k: v for k, v in loaded.metrics.items() if k.startswith("val/")}
    return {}


def run_config(loaded: LoadedRun, dataset: DictConfig | None = None) -> DictConfig:
    """The run's config, with `dataset` in place of its own when given."""
    from trainkit.config.targets import current_targets

    cfg = OmegaConf.create(current_targets(loaded.config))
    if dataset is not None:
        cfg.dataset = dataset
    return cfg


def eval_data(loaded: LoadedRun, cfg: DictConfig, split: str, device: str = "auto",
              batch_size: int | None = None) -> EvalData:
    """The loader over `split` of the dataset `cfg` names, feeding `loaded`'s model its inputs."""
    from trainkit.data.build import build_data, choose_loader
    from trainkit.data.augmentation import build_pipeline
    from trainkit.data.device_loader import DeviceLoader
    from trainkit.data.loaders import WorkerLoader
    from trainkit.engine.devices import resolve_device, resolve_precision

    if split not in SPLITS:
        raise allowed("split", split, ", ".join(SPLITS))
    torch_device = resolve_device(device)
    precision = cfg.trainer.precision if torch_device.type == "cuda" else "32"
    amp_dtype = resolve_precision(precision, torch_device)
    if batch_size is not None:
        cfg.trainer.eval_batch_size = int(batch_size)
    data = build_data(cfg, torch_device)
    check_compatible(loaded, data.spec, cfg.dataset.name)
    data.preprocess = loaded.preprocess.normalize.to(torch_device)  # the run's own: its mean/std, its fitted ZCA
    loader = {"test": data.test, "val": data.val}.get(split)
    if loader is None:  # the training images, without the training augmentation or shuffling
        eval_pipeline = build_pipeline(cfg.augmentation.eval, "augmentation.eval")
        kind, _, _, eval_ops = choose_loader(cfg.dataset.loader, data.splits, data.train_pipeline, eval_pipeline,
                                             torch_device)
        batch = int(cfg.trainer.eval_batch_size)
        loader = (DeviceLoader(data.splits.train, eval_ops, batch, 0, train=False, device=torch_device) if kind == "device"
                  else WorkerLoader(data.splits.train, eval_pipeline, batch, 0, train=False, workers=0, pin_memory=False))
    return EvalData(loader, data.to_device, torch_device, amp_dtype, str(cfg.dataset.name),
                    fingerprint(getattr(data.splits, split)), data.close)


def fingerprint(source) -> str:
    import hashlib

    digest = hashlib.sha256(source.labels.tobytes())
    digest.update(source.images.tobytes())
    return digest.hexdigest()[:16]


def check_compatible(loaded: LoadedRun, spec, dataset: str) -> None:
    """The model takes this dataset's images and predicts its classes, in the same order."""
    own = loaded.spec
    if (spec.image_size, spec.in_channels) != (own.image_size, own.in_channels):
        raise UserError(f"dataset={dataset} has {spec.image_size}x{spec.image_size}x{spec.in_channels} images but the run "
                        f"{loaded.checkpoint} was trained on {own.image_size}x{own.image_size}x{own.in_channels}: "
                        "evaluate it on a dataset with the same image size and channels")
    if list(spec.class_names) != list(own.class_names):
        raise UserError(f"dataset={dataset} has the classes {short(spec.class_names)} but the run {loaded.checkpoint} "
                        f"predicts {short(own.class_names)}: evaluate it on a dataset with the same classes, in the same order")


def short(names: list[str], n: int = 6) -> str:
    shown = ", ".join(map(str, names[:n]))
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)})"
