"""The Amazon interaction-sequence reader (SASRec layout) on the real file in ../shared/data
and on small files written here: samples, leave-last-out split, popularity negatives,
truncated and empty histories, malformed lines, and a training run that reports GAUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recemb.data import load_dataset
from recemb.data.amazon import SequenceOptions, load_amazon
from recemb.data.tabular import ReadOptions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VIDEO = SHARED / "amazon_video_games_seq" / "Video.txt"
needs_file = pytest.mark.skipif(not VIDEO.is_file(), reason=f"the Amazon file is not in {SHARED}")
LINES = 400


def _sequences(n: int) -> dict[int, list[int]]:
    """An independent parse: each user's items in file order, of the first n lines."""
    out: dict[int, list[int]] = {}
    with VIDEO.open() as f:
        for _, line in zip(range(n), f):
            user, item = (int(x) for x in line.split())
            out.setdefault(user, []).append(item)
    return out


def rows_of(data, k: int) -> tuple[int, list[int], float]:
    """(target, history, label) of row k."""
    j = data.jagged["hist_item"]
    return int(data.single[k, 0]), j.values[j.offsets[k] : j.offsets[k + 1]].tolist(), float(data.labels[k])


@needs_file
def test_samples_follow_each_users_sequence_leave_last_out():
    data = load_amazon(VIDEO, SequenceOptions(max_len=5), ReadOptions(max_rows=LINES))
    sequences = _sequences(LINES)
    assert data.train.schema.feature("hist_item").table == "item"
    assert data.train.schema.feature("item").cardinality == max(i for s in sequences.values() for i in s) + 1
    expected_test = [u for u, s in sequences.items() if len(s) >= 3]
    users = data.groups["test"].view(-1, 3)[:, 0].tolist()
    assert users == expected_test
    by_positive = data.groups["test"].view(-1, 3)
    assert (by_positive == by_positive[:, :1]).all()  # a positive and its negatives: one user
    for k, user in enumerate(users):
        seq = sequences[user]
        target, history, label = rows_of(data.test, 3 * k)
        assert (target, history, label) == (seq[-1], seq[-6:-1], 1.0)
        valid = rows_of(data.valid, 3 * k)
        assert (valid[0], valid[1], valid[2]) == (seq[-2], seq[-7:-2], 1.0)
        for neg in (1, 2):  # two popularity negatives sharing the history
            target_n, history_n, label_n = rows_of(data.test, 3 * k + neg)
            assert history_n == history and label_n == 0.0 and target_n != seq[-1]
    # training: positions 1 .. n-3 of each user (position 0 has no history), 3 rows each
    n_train = sum(len(s) - 3 if len(s) >= 3 else len(s) - 1 for s in sequences.values())
    assert len(data.train) == 3 * n_train
    assert data.train.labels.view(-1, 3).tolist() == [[1.0, 0.0, 0.0]] * n_train


@needs_file
def test_negatives_come_from_training_items_and_follow_the_seed():
    a = load_amazon(VIDEO, SequenceOptions(neg_seed=1), ReadOptions(max_rows=LINES))
    b = load_amazon(VIDEO, SequenceOptions(neg_seed=1), ReadOptions(max_rows=LINES))
    c = load_amazon(VIDEO, SequenceOptions(neg_seed=2), ReadOptions(max_rows=LINES))
    assert torch.equal(a.test.single, b.test.single) and not torch.equal(a.test.single, c.test.single)
    train_items = set(a.train.single[a.train.labels == 1, 0].tolist())
    train_items |= set(a.train.jagged["hist_item"].values.tolist())
    negatives = set(a.test.single[a.test.labels == 0, 0].tolist())
    assert negatives <= train_items


def test_truncated_and_empty_histories_are_counted(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("".join(f"1 {i}\n" for i in range(1, 9)) + "2 3\n2 4\n")  # user 1: 8 items, user 2: 2
    data = load_amazon(path, SequenceOptions(max_len=3, negatives=1, min_history=0))
    # user 1: train positions 0..5 (histories 0,1,2,3,3,3), valid 6, test 7; user 2: train 0, 1
    assert data.train.jagged["hist_item"].lengths.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 0, 0, 1, 1]
    assert data.report["empty_histories"] == 4 and data.report["truncated_histories"] == 2 * 4  # positions 4, 5, 6, 7
    assert rows_of(data.test, 0) == (8, [5, 6, 7], 1.0)  # the most recent 3 items
    assert data.test.single[1, 0] != 8


def test_malformed_lines_are_refused_or_skipped(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 5\n1 6\n1 x\n2 3\n1 7\n2 4\n2 5\n\n")
    with pytest.raises(ValueError, match=rf"{path.name}, line 3: '1 x' is not `<user> <item>`"):
        load_amazon(path)
    unsorted = tmp_path / "unsorted.txt"
    unsorted.write_text("1 5\n2 3\n1 7\n")
    with pytest.raises(ValueError, match=r"line 3: user 1 after user 2: each user's lines must be together"):
        load_amazon(unsorted)
    data = load_dataset(f"amazon:{path}?on_bad_lines=skip")
    assert data.report["skipped_lines"] == 3  # '1 x', the out-of-order '1 7', the blank line
    assert data.report["interactions"] == 5


def test_bad_paths_and_options_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no interaction file"):
        load_amazon(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        load_amazon(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match=r"unknown data option 'maxlen' \(did you mean 'max_len'\?\) for amazon"):
        load_dataset(f"amazon:{tmp_path}?maxlen=3")
    with pytest.raises(ValueError, match=r"SequenceOptions.max_len must be >= 1, got 0"):
        load_dataset(f"amazon:{tmp_path}?max_len=0")


@needs_file
def test_a_training_run_reports_gauc():
    from recemb.run import run_training

    conf = {
        "data": f"amazon:{VIDEO}?max_rows=1500,max_len=8",
        "table": {"kind": "decoupled", "attention": "full:dim=8", "representation": "full:dim=16"},
        "model": {"name": "dare", "hidden": [16]},
        "train": {"batch_size": 512},
    }
    metrics = run_training(conf).metrics
    assert list(metrics)[:3] == ["auc", "gauc", "logloss"]
    assert 0 <= metrics["gauc"] <= 1 and np.isfinite(metrics["auc"])
