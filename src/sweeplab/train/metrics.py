"""Per-class metrics from a confusion matrix, and its plot.

(Loss and accuracy curves are MLflow's own charts of the per-epoch metrics; a per-run
curves.png cost ~0.22 s per job and showed the same, see docs/benchmarks.md.)
"""

from __future__ import annotations

from pathlib import Path

import torch


def per_class_table(confusion: torch.Tensor, classes: list[str]) -> dict[str, list]:
    """Precision, recall, F1 and support of each class from a [true, predicted] confusion
    matrix, as table columns (one row per class; logged with `log_table`, not as 3 metric keys
    per class, which is 300 keys on CIFAR-100).

    A class never predicted has precision 0 (and never present, recall 0), not NaN.
    """
    c = confusion.double()
    tp = c.diagonal()
    predicted, actual = c.sum(0), c.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), 0 * tp)
    return {
        "class": [str(name) for name in classes],
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": [int(n) for n in actual.tolist()],
    }


def macro_metrics(table: dict[str, list], prefix: str = "test") -> dict[str, float]:
    """{prefix}_macro_{precision,recall,f1}: the unweighted mean over classes (sklearn's
    average="macro" with zero_division=0)."""
    n = max(len(table["class"]), 1)
    return {f"{prefix}_macro_{k}": sum(table[k]) / n for k in ("precision", "recall", "f1")}


def pyplot(path: Path):
    """matplotlib.pyplot on the file-only Agg backend, with `path`'s folder created."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    return plt


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> Path:
    plt = pyplot(path)
    n = len(classes)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        top = confusion.max().item() or 1
        for i in range(n):
            for j in range(n):
                v = confusion[i, j].item()
                color = "white" if v > top / 2 else "black"
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix (best checkpoint)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
