"""Stable salted 64-bit hashes of ids and strings, shared by every hashing kind and reader.

One family, three entry points that agree bit for bit:
- `mix64` (torch) / `mix64_numpy` / `mix64_int`: splitmix64's finalizer, a bijection on 64
  bits with good avalanche. torch has no uint64 arithmetic, so it runs on int64 bit patterns:
  multiplication wraps (two's complement) and logical right shifts are emulated by
  masking off the sign fill;
- `salted_hash(ids, salt) = mix64(ids + salt)` (wrapping): splitmix64's output for the state
  id + salt; raw ids anywhere in int64, negatives included;
- `hash_string`/`hash_strings`: FNV-1a over the UTF-8 bytes, then `mix64`, for readers that
  turn categorical strings into int64 ids.
Salts come from `feature_salt(seed, name, probe)`, a pure function of its arguments (names go
through `hash_string`, never Python's `hash()`, which is randomized per process), so the
same id lands on the same row in every process, run and machine.

`bucketize` maps a hash into [0, buckets): below 2**24 buckets, Lemire's multiply-shift of
its low 39 bits (no integer division, a relative bias under 2**-15; a power of two is a
shift and a mask), beyond that `%` of its 63 low bits. A hash's row depends only on the hash
and the number of buckets, whether one size or a size per value is given.

Cost: torch runs each step as one pass over the ids, so the steps are few and mostly in
place: a salted hash is 12 passes (13 with a salt per id), a bucket 2-3 passes and no
division below 2**24 buckets. On the CPU, hashing and bucketing 26 features x 4096 ids
takes about 1 ms, against about 10 ms for TBE's forward and backward of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

MASK64 = (1 << 64) - 1
MASK63 = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
# multiply-shift uses the low FAST_BITS bits of a hash; u * buckets must stay below 2**63
FAST_BITS = 39
_LOW = (1 << FAST_BITS) - 1
FAST_RANGE_LIMIT = 1 << (63 - FAST_BITS)  # 2**24 buckets


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 value torch stores for it."""
    x &= MASK64
    return x - (1 << 64) if x >> 63 else x


def _logical_shift_(z: Tensor, shift: int, out: Tensor) -> Tensor:
    """out = z >>> shift (unsigned): the arithmetic shift with its sign fill masked off."""
    torch.bitwise_right_shift(z, shift, out=out)
    return out.bitwise_and_((1 << (64 - shift)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's output for the state int64 `x` (a new tensor)."""
    return _finalize_(x.long() + _signed(_GOLDEN))


def _finalize_(z: Tensor) -> Tensor:
    """splitmix64's output steps, in place on z (= state + golden); two buffers in all."""
    t = torch.empty_like(z)
    z ^= _logical_shift_(z, 30, t)
    z *= _signed(_M1)
    z ^= _logical_shift_(z, 27, t)
    z *= _signed(_M2)
    z ^= _logical_shift_(z, 31, t)
    return z


def mix64_numpy(x: np.ndarray) -> np.ndarray:
    """mix64 on numpy uint64 (wrapping arithmetic); equal bit for bit to the torch version."""
    z = x.astype(np.uint64) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def mix64_int(x: int) -> int:
    """mix64 on one Python int, as an unsigned 64-bit value."""
    z = (x + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def salted_hash(ids: Tensor, salt: int | Tensor) -> Tensor:
    """[N] int64 hashes of int64 (or int32) ids; `salt` is one int or one per id ([N] int64)."""
    if isinstance(salt, int):
        return _finalize_(ids.long() + _signed(salt + _GOLDEN))  # one pass for salt and golden
    z = ids.long() + salt
    z += _signed(_GOLDEN)
    return _finalize_(z)


def bucketize(hashes: Tensor, buckets: int | Tensor, max_buckets: int | None = None) -> Tensor:
    """Hashes -> [0, buckets). `buckets` is one size, or a size per hash ([N] int64, e.g. each
    value's table) whose maximum is `max_buckets` (computed when not given). The row is a
    function of (hash, size) only, whichever path computes it: below FAST_RANGE_LIMIT the
    multiply-shift of the low 39 bits (for a power of two, a shift and a mask give the
    same), above it `%` of the low 63 bits (for a power of two, a mask)."""
    if isinstance(buckets, int):
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        power_of_two = buckets & (buckets - 1) == 0
        if buckets < FAST_RANGE_LIMIT:
            if power_of_two:  # = the multiply-shift: bits [39 - b, 39) of the hash
                bits = buckets.bit_length() - 1
                return (hashes >> (FAST_BITS - bits)).bitwise_and_(buckets - 1)
            return _multiply_shift(hashes, buckets)
        return hashes & (buckets - 1) if power_of_two else (hashes & MASK63) % buckets
    largest = int(buckets.max()) if max_buckets is None else max_buckets
    if largest < FAST_RANGE_LIMIT:
        return _multiply_shift(hashes, buckets)
    return torch.where(buckets < FAST_RANGE_LIMIT, _multiply_shift(hashes, buckets), (hashes & MASK63) % buckets)


def _multiply_shift(hashes: Tensor, buckets: int | Tensor) -> Tensor:
    """Lemire's range reduction of the low FAST_BITS bits: floor(u * buckets / 2**FAST_BITS)."""
    low = hashes & _LOW  # uniform in [0, 2**39)
    low *= buckets  # where buckets >= FAST_RANGE_LIMIT (only inside a torch.where) this may wrap: unused
    return low.bitwise_right_shift_(FAST_BITS)


def hash_to_buckets(ids: Tensor, salt: int | Tensor, buckets: int | Tensor, max_buckets: int | None = None) -> Tensor:
    """bucketize(salted_hash(ids, salt), buckets): the row of each id in a hashed table."""
    return bucketize(salted_hash(ids, salt), buckets, max_buckets)


def _fnv1a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & MASK64
    return h


def hash_string(text: str) -> int:
    """A stable int64 hash of a string: FNV-1a over its UTF-8 bytes, then mix64."""
    return _signed(mix64_int(_fnv1a(text.encode("utf-8"))))


def hash_strings(texts: Iterable[str] | np.ndarray) -> np.ndarray:
    """hash_string of many strings at once ([N] int64), vectorized over strings with numpy.

    The strings go through numpy's fixed-width bytes, which drops trailing NUL characters:
    'a\\x00' hashes as 'a' here (and only here), which no categorical token relies on.
    """
    data = np.char.encode(np.asarray(texts, dtype=str), "utf-8")  # [N] fixed-width bytes
    n = data.shape[0] if data.ndim else 1
    data = data.reshape(n)
    lengths = np.char.str_len(data)
    width = data.dtype.itemsize
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if width:
        columns = data.view(np.uint8).reshape(n, width).astype(np.uint64)
        for j in range(width):  # one pass per byte position, vectorized over the strings
            active = j < lengths
            h = np.where(active, (h ^ columns[:, j]) * np.uint64(_FNV_PRIME), h)
    return mix64_numpy(h).view(np.int64)


def feature_salt(seed: int, name: str, probe: int = 0) -> int:
    """The salt (int64) of probe `probe` of the feature or table `name` under `seed`."""
    s = mix64_int(seed & MASK64)
    s = mix64_int(s ^ (hash_string(name) & MASK64))
    return _signed(mix64_int(s ^ (probe & MASK64)))
