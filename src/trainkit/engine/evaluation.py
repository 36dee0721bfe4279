"""What a trained model gets right and wrong on a split: probabilities, then the numbers.

`collect` runs the model over a loader once per test-time view and keeps the softmax of each;
`classification_report` turns probabilities and labels into accuracy, per-class accuracy, the
confusion matrix, the most confused pairs, top-k accuracy and calibration (ECE with its
reliability bins). scikit-learn has a confusion matrix and top-k accuracy, but neither ECE nor
reliability bins, and the few lines of numpy below do all of them in one pass.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainkit.engine.devices import autocast

ECE_BINS = 15  # Guo et al. 2017's choice; torchmetrics' default too


@dataclass
class Predictions:
    """Per image: the label, the model's plain softmax, and the softmax averaged over the TTA views."""

    labels: np.ndarray  # (N,) int64
    plain: np.ndarray  # (N, K) float64 probabilities of the image as it is
    plain_pred: np.ndarray  # (N,) argmax of the logits (as the training loop's test counts it)
    plain_loss: float  # mean cross-entropy of the logits (as test/loss)
    tta: np.ndarray | None  # (N, K) averaged over the views; None without TTA


@torch.no_grad()
def collect(model, loader, to_device, device, amp_dtype=None, tta=None, limit: int | None = None) -> Predictions:
    """Softmax outputs of `model` over `loader`. to_device(images, labels) -> (model input, labels);
    with `tta`, each batch's raw pixels are turned into views first, each view preprocessed alone."""
    model.eval()
    labels_all, plain_all, pred_all, tta_all = [], [], [], []
    loss_sum, count = 0.0, 0
    for images, labels in itertools.islice(loader, limit):
        inputs, labels = to_device(images, labels)
        with autocast(device, amp_dtype):
            logits = model(inputs)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        count += labels.numel()
        labels_all.append(labels.cpu())
        pred_all.append(logits.argmax(1).cpu())
        plain_all.append(logits.float().softmax(1).double().cpu())
        if tta is not None and tta.kind != "none":
            raw = images.to(device).float()  # raw pixels 0..255: the views are cut before the preprocessing
            mean = torch.zeros_like(plain_all[-1])
            for weight, view in tta.views(raw):
                view_input, _ = to_device(view.clone(), labels)  # the preprocessing divides in place
                with autocast(device, amp_dtype):
                    mean += weight * model(view_input).float().softmax(1).double().cpu()
            tta_all.append(mean)
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    return Predictions(labels=cat(labels_all), plain=cat(plain_all), plain_pred=cat(pred_all),
                       plain_loss=loss_sum / max(1, count), tta=cat(tta_all) if tta_all else None)


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str], top_k: int = 5,
                          predictions: np.ndarray | None = None, bins: int = ECE_BINS, pairs: int = 10) -> dict:
    """Every number `trainkit eval` writes, from probabilities (N, K) and labels (N,)."""
    n, k = probs.shape
    pred = probs.argmax(1) if predictions is None else predictions
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(1)
    per_class = {name: {"acc": float(confusion[i, i] / support[i]) if support[i] else None, "images": int(support[i])}
                 for i, name in enumerate(class_names)}
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:pairs]
    confused = [{"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j])}
                for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]
    ranked = np.argsort(-probs, axis=1, kind="stable")
    top = {f"top{m}": float((ranked[:, :m] == labels[:, None]).any(1).mean()) for m in sorted({1, min(top_k, k)})}
    eps = np.finfo(np.float64).tiny
    return {
        "images": int(n), "acc": float((pred == labels).mean()),
        "nll": float(-np.log(np.maximum(probs[np.arange(n), labels], eps)).mean()),
        **top, **calibration(probs, labels, bins, pred),
        "per_class": per_class, "most_confused": confused, "confusion_matrix": confusion.tolist(),
    }


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, pred: np.ndarray | None = None) -> dict:
    """Expected calibration error (Guo et al. 2017): the |accuracy - confidence| gap of equal-width
    confidence bins, weighted by the share of images in each; and the bins for a reliability diagram."""
    pred = probs.argmax(1) if pred is None else pred
    confidence = probs[np.arange(len(labels)), pred]
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        acc = float(correct[inside].mean()) if count else None
        conf = float(confidence[inside].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(acc - conf)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "images": count, "acc": acc,
                      "confidence": conf})
    return {"ece": float(ece), "mean_confidence": float(confidence.mean()), "reliability": table}
