"""The one-pass C++ hash kernel (recemb/native/hash.cpp) gives the bits of the numpy and torch
paths of `hash_to_buckets` for every rule (multiply-shift, mask, modulo), salt and size per
id or per run, ids kept as their own rows, id dtype and shape, on any number of threads."""

from __future__ import annotations

import pytest
import torch

from recemb import hashing, native
from recemb.hashing import FAST_RANGE_LIMIT, Runs, hash_to_buckets

KERNEL = native.load("hash")
pytestmark = pytest.mark.skipif(KERNEL is None, reason="native hash kernel not built on this machine")

SIZES = [1, 7, 64, 1000, 1024, FAST_RANGE_LIMIT - 1, FAST_RANGE_LIMIT, FAST_RANGE_LIMIT + 1, 2**30, 2**40 + 3, 2**62]
EDGE_IDS = [0, 1, -1, 2**63 - 1, -(2**63), 12345678901234, -987654321]


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randint(-(2**62), 2**62, (n,), generator=gen) * 2  # all of int64, negatives too
    return torch.cat([torch.tensor(EDGE_IDS), wide, torch.arange(n)])


def python_paths(ids, salt, buckets, max_buckets=None, own_rows=0):
    """The numpy and the torch rows of the same call (salts and sizes spread to the ids)."""
    per_id = [a.per_id if isinstance(a, Runs) else a for a in (salt, buckets)]
    return (
        hashing._keep_own_rows(ids, hashing._hash_to_buckets_numpy(ids, *per_id, max_buckets), own_rows),
        hashing._keep_own_rows(
            ids, hashing._bucketize_torch(hashing._salted_hash_torch(ids, per_id[0]), per_id[1], max_buckets), own_rows
        ),
    )


def assert_same_bits(ids, salt, buckets, max_buckets=None, own_rows=0):
    got = hashing._hash_to_buckets_native(KERNEL, ids, salt, buckets, max_buckets, own_rows)
    for want in python_paths(ids, salt, buckets, max_buckets, own_rows):
        assert got.dtype == torch.int64 and got.shape == ids.shape
        assert torch.equal(got, want)


@pytest.mark.parametrize("size", SIZES)
def test_one_salt_and_one_size(size):
    ids = ids_of(3000, size % 97)
    for salt in (0, 17, -5, 2**63 - 1):
        assert_same_bits(ids, salt, size)


def test_a_salt_and_a_size_per_id():
    ids = ids_of(4000, 1)
    n = len(ids)
    gen = torch.Generator().manual_seed(2)
    salts = torch.randint(-(2**62), 2**62, (n,), generator=gen)
    small = torch.tensor(SIZES[:6])[torch.randint(0, 6, (n,), generator=gen)]  # all below 2**24
    mixed = torch.tensor(SIZES)[torch.randint(0, len(SIZES), (n,), generator=gen)]  # each id's own rule
    for sizes in (small, mixed):
        assert_same_bits(ids, salts, sizes)
        assert_same_bits(ids, 99, sizes)
    assert_same_bits(ids, salts, 1000)
    assert_same_bits(ids, salts, 2**40 + 3)


def test_a_salt_and_a_size_per_run():
    """Runs as a hashed table's features give them: empty runs included, sizes of both rules."""
    counts = torch.tensor([5, 0, 4000, 1, 0, 300, 20_000])
    ids = ids_of(int(counts.sum()), 3)[: int(counts.sum())]
    salts = Runs(torch.tensor([3, -4, 2**62, 0, 7, -(2**63), 11]), counts)
    for values in ([10, 64, 1000, 7, 1, 2**20, 3], [10, 2**30, 1000, 2**40 + 3, 1, FAST_RANGE_LIMIT, 3]):
        sizes = Runs(torch.tensor(values), counts)
        assert_same_bits(ids, salts, sizes)
        assert_same_bits(ids, 5, sizes)
        assert_same_bits(ids, salts, 4096)


def test_ids_below_own_rows_keep_their_row():
    """A table with a row per id: ids in [0, own_rows) are their rows, the rest (negatives
    too) hashed; one bound for all ids, or one per run (0: that run all hashed)."""
    ids = ids_of(2000, 6)
    rows = hash_to_buckets(ids, 3, 1000, own_rows=1000)
    inside = (ids >= 0) & (ids < 1000)
    assert inside.sum() >= 1000 and torch.equal(rows[inside], ids[inside])
    assert torch.equal(rows[~inside], hash_to_buckets(ids, 3, 1000)[~inside])
    assert_same_bits(ids, 3, 1000, own_rows=1000)
    assert_same_bits(ids.int().view(-1), 3, 2**40 + 3, own_rows=2**31)
    counts = torch.tensor([1000, 0, len(ids) - 1000])
    salts, sizes = Runs(torch.tensor([1, 2, 3]), counts), Runs(torch.tensor([64, 5, 2**30]), counts)
    for owns in ([64, 0, 0], [0, 5, 2**30], [64, 5, 2**30]):
        assert_same_bits(ids, salts, sizes, own_rows=Runs(torch.tensor(owns), counts))
        assert_same_bits(ids, 9, 2**30, own_rows=Runs(torch.tensor(owns), counts))
    with pytest.raises(ValueError, match=r"own_rows must be >= 0 \(0: hash every id\), got -1"):
        hash_to_buckets(ids, 3, 1000, own_rows=-1)


def test_int32_and_multi_dimensional_ids():
    ids = ids_of(500, 4)[: 2 * 250].view(2, 250)
    assert_same_bits(ids, 8, 1000)
    small = torch.randint(-(2**31), 2**31 - 1, (600,), dtype=torch.int32)
    assert_same_bits(small, 8, 1000)
    assert_same_bits(small, 8, 2**40 + 3)


def test_no_ids():
    assert_same_bits(torch.empty(0, dtype=torch.int64), 3, 10)


def test_the_same_bits_on_any_number_of_threads():
    ids = ids_of(300_000, 5)  # many chunks of the kernel's grain
    counts = torch.tensor([100_000, len(ids) - 100_000])
    threads = torch.get_num_threads()
    try:
        rows = []
        for n in (1, 2):
            torch.set_num_threads(n)
            rows.append(hash_to_buckets(ids, Runs(torch.tensor([1, 2]), counts), Runs(torch.tensor([999, 2**30]), counts)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(rows[0], rows[1])


def test_hash_to_buckets_takes_the_kernel(monkeypatch):
    calls = []
    native_path = hashing._hash_to_buckets_native
    monkeypatch.setattr(hashing, "_hash_to_buckets_native", lambda *a: calls.append(1) or native_path(*a))
    hash_to_buckets(ids_of(10), 3, 100)
    assert calls


def test_bad_runs_are_refused():
    with pytest.raises(ValueError, match="one entry per run, got 2 values and 3 counts"):
        Runs(torch.tensor([1, 2]), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="Runs.values must be a 1-d int64 tensor"):
        Runs(torch.tensor([1.0]), torch.tensor([1]))
    ids = torch.arange(5)
    with pytest.raises(RuntimeError, match="run_ends must end at the number of ids"):
        KERNEL.hash_to_buckets(ids, torch.tensor([1, 2]), None, torch.tensor([2, 4]), None, 0, 10, 0, 0)
    with pytest.raises(RuntimeError, match="nondecreasing"):
        KERNEL.hash_to_buckets(ids, torch.tensor([1, 2, 3]), None, torch.tensor([4, 3, 5]), None, 0, 10, 0, 0)
    with pytest.raises(RuntimeError, match="salt must have one value per run"):
        KERNEL.hash_to_buckets(ids, torch.tensor([1]), None, torch.tensor([2, 5]), None, 0, 10, 0, 0)
    with pytest.raises(RuntimeError, match="owns needs run_ends"):
        KERNEL.hash_to_buckets(ids, None, None, None, torch.tensor([1] * 5), 0, 10, 0, 0)
    with pytest.raises(RuntimeError, match="own must be >= 0, got -3 at run 1"):
        KERNEL.hash_to_buckets(ids, None, None, torch.tensor([2, 5]), torch.tensor([0, -3]), 0, 10, 0, 0)
