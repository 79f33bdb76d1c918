"""Classifier metrics at an operating threshold: precision, recall, F1, ROC-AUC, confusion matrix."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC as the Mann-Whitney U statistic (ties count one half); None when one class is absent."""
    y = np.asarray(y_true, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y_true, scores, threshold: float) -> dict:
    """Metrics of `score >= threshold` as the positive prediction, plus the threshold-free ROC-AUC."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": int(len(y)),
        "positives": tp + fn,
        "negatives": fp + tn,
        "threshold": threshold,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "accuracy": round((tp + tn) / len(y), 4) if len(y) else 0.0,
        "roc_auc": None if (auc := roc_auc(y, s)) is None else round(auc, 4),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def format_table(name: str, m: dict) -> str:
    """A short printable table of one metrics dict."""
    c = m["confusion"]
    auc = "n/a (one class)" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
    return "\n".join(
        [
            f"{name}: {m['n']} docs ({m['positives']} positive, {m['negatives']} negative), threshold "
            f"{m['threshold']}",
            f"  precision {m['precision']:.3f}   recall {m['recall']:.3f}   F1 {m['f1']:.3f}   ROC-AUC {auc}",
            "              predicted +   predicted -",
            f"  actual +    {c['tp']:>11}   {c['fn']:>11}",
            f"  actual -    {c['fp']:>11}   {c['tn']:>11}",
        ]
    )
