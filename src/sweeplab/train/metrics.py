"""Per-class metrics from a confusion matrix (its plot: sweeplab.track.plots)."""

from __future__ import annotations

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
