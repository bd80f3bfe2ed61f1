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


def gauc(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (Zhou et al., DIN, KDD 2018): the AUC within each group (user), averaged
    with the group's number of rows as weight, over the groups that have both a positive
    and a negative row (others have no AUC and are left out). NaN (with a warning) when no
    group has both. Ties within a group count one half, as in roc_auc_score."""
    import pandas as pd

    labels, probs, groups = np.asarray(labels), np.asarray(probs), np.asarray(groups)
    if not labels.shape == probs.shape == groups.shape or labels.ndim != 1:
        raise ValueError(
            f"gauc needs labels, probs and groups of one length, got shapes "
            f"{labels.shape}, {probs.shape}, {groups.shape}"
        )
    frame = pd.DataFrame({"group": groups, "label": labels.astype(np.float64), "prob": probs})
    frame["rank"] = frame.groupby("group")["prob"].rank(method="average")  # 1-based, ties averaged
    frame["pos_rank"] = frame["rank"] * frame["label"]
    per = frame.groupby("group").agg(n=("label", "size"), pos=("label", "sum"), pos_rank=("pos_rank", "sum"))
    per["neg"] = per["n"] - per["pos"]
    per = per[(per["pos"] > 0) & (per["neg"] > 0)]
    if per.empty:
        log.warning("GAUC undefined: none of the %d groups has both classes", frame["group"].nunique())
        return math.nan
    # Mann-Whitney: AUC = (sum of positives' ranks - P(P+1)/2) / (P·N)
    group_auc = (per["pos_rank"] - per["pos"] * (per["pos"] + 1) / 2) / (per["pos"] * per["neg"])
    return float(np.average(group_auc, weights=per["n"]))
