"""GAUC: the impression-weighted mean of per-user AUCs over users with both classes."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recemb.metrics import gauc


def test_gauc_equals_the_weighted_mean_of_per_group_aucs():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 3000)
    labels = rng.integers(0, 2, 3000)
    probs = np.round(rng.random(3000) + 0.3 * labels, 1)  # ties within groups
    aucs, weights = [], []
    for g in np.unique(groups):
        rows = groups == g
        if len(np.unique(labels[rows])) == 2:
            aucs.append(roc_auc_score(labels[rows], probs[rows]))
            weights.append(rows.sum())
    assert gauc(labels, probs, groups) == pytest.approx(np.average(aucs, weights=weights), abs=1e-12)


def test_groups_with_one_class_are_left_out():
    labels = np.array([1, 0, 0, 1, 1, 1])
    probs = np.array([0.9, 0.1, 0.5, 0.2, 0.3, 0.4])
    groups = np.array(["a", "a", "b", "b", "c", "c"])  # c has positives only
    # a: 1.0 (2 rows), b: 0.0 (2 rows)
    assert gauc(labels, probs, groups) == pytest.approx(0.5)
    assert math.isnan(gauc(np.ones(3), np.ones(3) * 0.5, np.arange(3)))


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        gauc(np.ones(3), np.ones(3), np.ones(2))
