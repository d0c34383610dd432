"""The PNG plots a run logs (its test confusion matrix) and the helpers the sweep's plots use.

matplotlib's object API on its Agg canvas, not pyplot: no global figure state shared between
jobs or the search's worker threads, and no window. (Loss and accuracy curves are MLflow's own
charts of the per-epoch metrics; a per-run curves.png cost ~0.22 s per job and showed the same,
see docs/benchmarks.md.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure


def save(fig: Figure, path: Path) -> Path:
    """`fig` as a PNG at `path` (its folder created), laid out so labels are not cut off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> Path:
    """[true, predicted] counts as a heat map; each cell's count written in it up to 30 classes."""
    n = len(classes)
    size = min(4 + 0.45 * n, 20)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        top = confusion.max().item() or 1
        for k, v in enumerate(confusion.flatten().tolist()):
            color = "white" if v > top / 2 else "black"
            ax.text(k % n, k // n, str(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix (best checkpoint)")
    return save(fig, path)
