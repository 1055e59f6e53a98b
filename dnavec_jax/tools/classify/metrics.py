"""Scores of `dnavec classify`: accuracy, macro F1, MCC and AUROC (one-vs-rest for more than two
classes); every choice (C, epoch) is made on dev MCC (docs/classify.md).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

SELECT_METRIC = "mcc"
METRICS = ("accuracy", "macro_f1", "mcc", "auroc")


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """accuracy, macro F1, MCC of argmax(probs); AUROC: of probs[:, 1] for two classes, one-vs-rest macro
    average for more; None when the split lacks a class (see the module docstring)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    auroc = None
    if len(np.unique(labels)) == probs.shape[1] == 2:
        auroc = float(roc_auc_score(labels, probs[:, 1]))
    elif len(np.unique(labels)) == probs.shape[1] > 2:
        normalised = probs / probs.sum(axis=1, keepdims=True)  # sklearn checks the sum to 1e-8
        auroc = float(roc_auc_score(labels, normalised, multi_class="ovr", average="macro"))
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(labels, predicted)), "auroc": auroc}


def better(score: float, best: float | None) -> bool:
    return best is None or score > best
