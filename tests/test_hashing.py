"""Stable salted hashes: the same in every process, defined for every int64, uniform into
buckets of any size, and near independent across salts."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import recemb.hashing
from recemb.hashing import (
    FAST_RANGE_LIMIT,
    _fnv1a,
    bucketize,
    feature_salt,
    hash_string,
    hash_strings,
    hash_to_buckets,
    mix64,
    mix64_int,
    mix64_numpy,
    salted_hash,
)

EXTREMES = [-(2**63), -(2**63) + 1, -(2**32), -1, 0, 1, 2**31, 2**32 + 7, 2**62, 2**63 - 1]
BUCKET_SIZES = [1, 2, 16, 1000, 1024, 1_000_003, FAST_RANGE_LIMIT - 1]
BUCKET_SIZES += [FAST_RANGE_LIMIT, FAST_RANGE_LIMIT + 1, 2**40, 2**40 + 3]  # the `%` path


def chi_square_bound(cells: int, sigmas: float = 6.0) -> float:
    """A loose upper bound of a chi-square statistic with cells - 1 degrees of freedom."""
    return cells - 1 + sigmas * math.sqrt(2 * (cells - 1))


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# -- stability ------------------------------------------------------------------------------

# loads recemb/hashing.py by path: the package's __init__ would import torchrec (seconds)
PROGRAM = """
import importlib.util, torch
spec = importlib.util.spec_from_file_location("hashing", {path!r})
hashing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hashing)
feature_salt, hash_strings, hash_to_buckets = hashing.feature_salt, hashing.hash_strings, hashing.hash_to_buckets
ids = torch.tensor({ids})
salt = feature_salt(7, "C1", 2)
print(salt)
print(hash_to_buckets(ids, salt, 1000).tolist())
print(hash_to_buckets(ids, salt, 2**20).tolist())
print(hash_strings(["", "a", "68fd1e64", "ü"]).tolist())
"""


def test_a_fresh_process_computes_the_same_hashes():
    """Nothing depends on Python's per-process hash() seed or on process state."""
    program = PROGRAM.format(ids=EXTREMES, path=recemb.hashing.__file__)
    env = {"PYTHONHASHSEED": "12345"}  # a different str-hash seed than this process's
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=env, timeout=120
    ).stdout.split("\n")
    ids = torch.tensor(EXTREMES)
    salt = feature_salt(7, "C1", 2)
    assert int(out[0]) == salt
    assert eval(out[1]) == hash_to_buckets(ids, salt, 1000).tolist()
    assert eval(out[2]) == hash_to_buckets(ids, salt, 2**20).tolist()
    assert eval(out[3]) == hash_strings(["", "a", "68fd1e64", "ü"]).tolist()


def test_known_values_pin_the_family():
    """Standard test vectors of the two building blocks, and pinned outputs of the whole:
    a change of any constant would silently remap every trained model's ids."""
    assert _fnv1a(b"a") == 0xAF63DC4C8601EC8C  # FNV-1a 64
    assert _fnv1a(b"foobar") == 0x85944171F73967E8
    assert mix64_int(0) == 0xE220A8397B1DCDAF  # splitmix64's first output from state 0
    assert hash_string("") == -4359066618775142608
    assert hash_string("68fd1e64") == 3575023389036567113
    assert feature_salt(0, "C1", 0) == -2045803895941462655


# -- every int64 --------------------------------------------------------------------------------


def test_torch_numpy_and_int_mixers_agree_on_every_bit():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor(EXTREMES), torch.randint(-(2**63), 2**63 - 1, (10_000,), generator=gen)])
    got = mix64(x)
    assert torch.equal(got, torch.from_numpy(mix64_numpy(x.numpy().view(np.uint64)).view(np.int64)))
    for v, h in zip(EXTREMES, got[: len(EXTREMES)].tolist()):
        assert h & (2**64 - 1) == mix64_int(v & (2**64 - 1))
    assert mix64(x).unique().numel() == x.unique().numel()  # a bijection: no collisions


@pytest.mark.parametrize("buckets", BUCKET_SIZES)
def test_extreme_and_negative_ids_land_in_range(buckets):
    ids = torch.tensor(EXTREMES * 3)
    for salt in (0, feature_salt(0, "x"), -1, 2**63 - 1):
        rows = hash_to_buckets(ids, salt, buckets)
        assert rows.dtype == torch.int64
        assert int(rows.min()) >= 0 and int(rows.max()) < buckets
    assert torch.equal(hash_to_buckets(ids.int().long(), 3, buckets), hash_to_buckets(ids.int(), 3, buckets))


def test_per_value_bucket_sizes_equal_one_size_at_a_time():
    """A row depends on (hash, size) only: a size per value gives what each size alone gives,
    across the fast path's limit and for powers of two on both sides of it."""
    n = len(BUCKET_SIZES)
    hashes = mix64(torch.arange(-n * 300, n * 300))
    mixed = torch.tensor(BUCKET_SIZES).repeat(600)
    small = mixed.clamp(max=FAST_RANGE_LIMIT - 1)
    for sizes in (mixed, small, torch.tensor([2**24, 2**30, 16, 1]).repeat(hashes.numel() // 4)[: hashes.numel()]):
        got = bucketize(hashes, sizes)
        for m in sizes.unique().tolist():
            assert torch.equal(got[sizes == m], bucketize(hashes[sizes == m], m)), m
    ids = torch.arange(-500, 500)
    salts = torch.tensor([feature_salt(0, "a"), feature_salt(0, "b")]).repeat_interleave(500)
    got = hash_to_buckets(ids, salts, torch.tensor([1000, 37]).repeat_interleave(500))
    assert torch.equal(got[:500], hash_to_buckets(ids[:500], feature_salt(0, "a"), 1000))
    assert torch.equal(got[500:], hash_to_buckets(ids[500:], feature_salt(0, "b"), 37))


def test_numpy_path_equals_the_torch_path():
    """On the CPU the hashes run in numpy; other devices run the torch steps. Both give the
    same bits for every id, salt (one, or one per id) and bucket size (one, or one per id),
    int32 ids included, and neither writes into its inputs."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.tensor(EXTREMES), torch.randint(-(2**63), 2**63 - 1, (5_000,), generator=gen)])
    per_id_salt = torch.randint(-(2**63), 2**63 - 1, ids.shape, generator=gen)
    before = (ids.clone(), per_id_salt.clone())
    for salt in (0, feature_salt(0, "C1"), -1, 2**63 - 1, per_id_salt):
        torch_hashes = recemb.hashing._salted_hash_torch(ids, salt)
        assert torch.equal(salted_hash(ids, salt), torch_hashes)
        sizes = [*BUCKET_SIZES, torch.tensor(BUCKET_SIZES).repeat(ids.numel())[: ids.numel()]]
        sizes.append(sizes[-1].clamp(max=FAST_RANGE_LIMIT - 1))
        for buckets in sizes:
            want = recemb.hashing._bucketize_torch(torch_hashes, buckets)
            assert torch.equal(hash_to_buckets(ids, salt, buckets), want), buckets
            assert torch.equal(bucketize(torch_hashes, buckets), want), buckets
    small = ids.int()
    want = recemb.hashing._bucketize_torch(recemb.hashing._salted_hash_torch(small, 5), 1000)
    assert torch.equal(hash_to_buckets(small, 5, 1000), want)
    hashes = salted_hash(ids, 3)
    kept = hashes.clone()
    bucketize(hashes, 1000)
    assert torch.equal(hashes, kept) and torch.equal(ids, before[0]) and torch.equal(per_id_salt, before[1])


def test_bucketize_refuses_zero_buckets():
    with pytest.raises(ValueError, match="buckets must be >= 1, got 0"):
        bucketize(torch.zeros(3, dtype=torch.int64), 0)


# -- distribution -------------------------------------------------------------------------------


@pytest.mark.parametrize("buckets", [64, 1000, 1024, FAST_RANGE_LIMIT + 1, 2**30])
def test_consecutive_ids_spread_uniformly(buckets):
    """Ids 0..n-1 (the worst case for a weak hash) fill buckets like a uniform draw. Above
    FAST_RANGE_LIMIT the top 10 bits of the row are binned (the `%` path)."""
    n = 200_000
    rows = hash_to_buckets(torch.arange(n), feature_salt(0, "C1"), buckets)
    cells = min(buckets, 1024)
    binned = rows if buckets <= 1024 else rows * cells // buckets
    counts = np.bincount(binned.numpy(), minlength=cells)
    assert chi_square(counts) < chi_square_bound(cells)


def test_different_salts_give_near_independent_buckets():
    """The joint distribution of (bucket under salt a, bucket under salt b) is uniform over
    all pairs, for probes of one feature and for two features."""
    n, m = 200_000, 32
    ids = torch.arange(n)
    for a, b in [(feature_salt(0, "C1", 0), feature_salt(0, "C1", 1)), (feature_salt(0, "C1"), feature_salt(0, "C2"))]:
        joint = hash_to_buckets(ids, a, m) * m + hash_to_buckets(ids, b, m)
        counts = np.bincount(joint.numpy(), minlength=m * m)
        assert chi_square(counts) < chi_square_bound(m * m)
        same = float((hash_to_buckets(ids, a, m) == hash_to_buckets(ids, b, m)).float().mean())
        assert abs(same - 1 / m) < 5 * math.sqrt(1 / m / n)


def test_salts_depend_on_seed_name_and_probe():
    salts = {feature_salt(s, name, p) for s in (0, 1) for name in ("C1", "C2", "C10") for p in range(3)}
    assert len(salts) == 2 * 3 * 3
    assert feature_salt(0, "C1", 1) == feature_salt(0, "C1", 1)


def test_salted_hash_accepts_a_salt_per_value():
    ids = torch.arange(10)
    salts = torch.tensor([feature_salt(0, "a")] * 5 + [feature_salt(0, "b")] * 5)
    got = salted_hash(ids, salts)
    assert torch.equal(got[:5], salted_hash(ids[:5], feature_salt(0, "a")))
    assert torch.equal(got[5:], salted_hash(ids[5:], feature_salt(0, "b")))


# -- strings ----------------------------------------------------------------------------------------


def test_string_hashes_vectorized_equal_one_at_a_time():
    texts = ["", "a", "ab", "68fd1e64", "ü", "日本語", "x" * 40, "a b", "A"]
    assert hash_strings(texts).tolist() == [hash_string(t) for t in texts]
    assert hash_strings(np.array(texts)).dtype == np.int64
    assert hash_strings([]).shape == (0,)
    assert len(set(hash_strings(texts).tolist())) == len(texts)


def test_string_hashes_spread_uniformly():
    tokens = [f"{i:08x}" for i in range(50_000)]  # Criteo-like hex tokens
    h = torch.from_numpy(hash_strings(tokens))
    counts = np.bincount(bucketize(h, 512).numpy(), minlength=512)
    assert chi_square(counts) < chi_square_bound(512)
