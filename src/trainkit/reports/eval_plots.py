"""The PNGs of `trainkit eval`: a confusion matrix and a reliability diagram.

matplotlib is imported here only (with the Agg backend: no display needed), so neither
training nor `import trainkit` pays for it.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(path: Path, confusion: list[list[int]], class_names: list[str], title: str) -> None:
    """Rows: true class; columns: predicted; each row coloured by its share, counts written in."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(confusion)
    k = len(class_names)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = min(2.5 + 0.45 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), class_names, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:  # beyond that the numbers are unreadable; the JSON has them
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_png(path: Path, reliability: list[dict], ece: float, title: str) -> None:
    """Accuracy against confidence per bin, with the diagonal a calibrated model would follow."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    filled = [b for b in reliability if b["images"]]
    width = reliability[0]["upper"] - reliability[0]["lower"]
    ax.bar([b["lower"] for b in filled], [b["acc"] for b in filled], width=width, align="edge",
           edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar([b["lower"] for b in filled], [b["confidence"] - b["acc"] for b in filled], bottom=[b["acc"] for b in filled],
           width=width, align="edge", edgecolor="tab:red", color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {ece:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
