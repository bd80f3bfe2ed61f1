"""AUC and log loss (scikit-learn), and how sure a comparison of two models is."""

from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

log = logging.getLogger(__name__)


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC; NaN (with a warning) when the labels hold one class only."""
    if len(np.unique(labels)) < 2:
        log.warning("AUC undefined: the %d labels are all %s", len(labels), labels[:1])
        return math.nan
    return float(roc_auc_score(labels, probs))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def auc_standard_error(labels: np.ndarray, probs: np.ndarray) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimate."""
    a = auc(labels, probs)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def paired_bootstrap_auc_diff(
    labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, rounds: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUC(b) - AUC(a) on the same rows, with a 95% paired bootstrap interval (low, high)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    diffs = []
    for _ in range(rounds):
        rows = rng.integers(0, n, n)
        if labels[rows].min() == labels[rows].max():
            continue
        diffs.append(roc_auc_score(labels[rows], probs_b[rows]) - roc_auc_score(labels[rows], probs_a[rows]))
    point = auc(labels, probs_b) - auc(labels, probs_a)
    low, high = np.percentile(diffs, [2.5, 97.5]) if diffs else (math.nan, math.nan)
    return point, float(low), float(high)
