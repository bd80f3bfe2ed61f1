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

Cost: each step is one pass over the ids, so the steps are few and in place. On the CPU
they run in numpy on the tensors' memory (no copy): its uint64 arithmetic has logical
shifts, which saves torch's three masking passes, and its int64 multiply and add were 3-4x
faster than torch's here; a salted hash is then 9 passes (10 with a salt per id), a bucket
2-3 passes and no division below 2**24 buckets. Hashing and bucketing 26 features x 4096
ids takes about 0.4 ms (0.7 ms in torch), against about 10 ms for TBE's forward and
backward of them. Other devices run the same steps in torch; both give the same bits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from types import ModuleType

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
_M1_U64, _M2_U64 = np.uint64(_M1), np.uint64(_M2)
_NUMPY_INTS = (torch.int64, torch.int32)  # the id dtypes the numpy path takes


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
    return _finalize_numpy_(x.astype(np.uint64) + np.uint64(_GOLDEN))


def mix64_int(x: int) -> int:
    """mix64 on one Python int, as an unsigned 64-bit value."""
    z = (x + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def _finalize_numpy_(z: np.ndarray) -> np.ndarray:
    """splitmix64's output steps, in place on uint64 z (= state + golden); one scratch buffer."""
    t = np.empty_like(z)
    for shift, multiplier in ((30, _M1_U64), (27, _M2_U64)):
        np.right_shift(z, shift, out=t)  # logical: z is unsigned
        z ^= t
        z *= multiplier
    np.right_shift(z, 31, out=t)
    z ^= t
    return z


def _numpy_ok(*tensors: Tensor | int) -> bool:
    """Whether the numpy path can take these: plain int64/int32 CPU tensors (ints pass), and
    no torch.compile tracing, which cannot see into numpy."""
    return not torch.compiler.is_compiling() and all(
        isinstance(t, int) or (type(t) is Tensor and t.device.type == "cpu" and t.dtype in _NUMPY_INTS and t.dim() > 0)
        for t in tensors
    )


def _u64(t: Tensor) -> np.ndarray:
    """An int64/int32 CPU tensor's values as uint64 bit patterns (a view of int64 memory;
    int32 is sign-extended into a copy, as Tensor.long() does)."""
    a = t.numpy()
    return (a if a.dtype == np.int64 else a.astype(np.int64)).view(np.uint64)


def _to_tensor(z: np.ndarray) -> Tensor:
    return torch.from_numpy(z.view(np.int64))


def salted_hash(ids: Tensor, salt: int | Tensor) -> Tensor:
    """[N] int64 hashes of int64 (or int32) ids; `salt` is one int or one per id ([N] int64)."""
    if _numpy_ok(ids, salt):
        return _to_tensor(_salted_hash_numpy(ids, salt))
    return _salted_hash_torch(ids, salt)


def _salted_hash_torch(ids: Tensor, salt: int | Tensor) -> Tensor:
    """salted_hash in torch ops, for devices numpy cannot reach."""
    if isinstance(salt, int):
        return _finalize_(ids.long() + _signed(salt + _GOLDEN))  # one pass for salt and golden
    z = ids.long() + salt
    z += _signed(_GOLDEN)
    return _finalize_(z)


def _salted_hash_numpy(ids: Tensor, salt: int | Tensor) -> np.ndarray:
    """salted_hash as a new uint64 array (wrapping arithmetic: the same bits)."""
    if isinstance(salt, int):
        return _finalize_numpy_(np.add(_u64(ids), np.uint64((salt + _GOLDEN) & MASK64)))
    z = np.add(_u64(ids), _u64(salt))
    z += np.uint64(_GOLDEN)
    return _finalize_numpy_(z)


def bucketize(hashes: Tensor, buckets: int | Tensor, max_buckets: int | None = None) -> Tensor:
    """Hashes -> [0, buckets). `buckets` is one size, or a size per hash ([N] int64, e.g. each
    value's table) whose maximum is `max_buckets` (computed when not given). The row is a
    function of (hash, size) only, whichever path computes it: below FAST_RANGE_LIMIT the
    multiply-shift of the low 39 bits (for a power of two, a shift and a mask give the
    same), above it `%` of the low 63 bits (for a power of two, a mask)."""
    if isinstance(buckets, int) and buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if hashes.dtype == torch.int64 and _numpy_ok(hashes, buckets):
        return _to_tensor(_bucketize_numpy_(_u64(hashes).copy(), buckets, max_buckets))
    return _bucketize_torch(hashes, buckets, max_buckets)


def _bucketize_numpy_(z: np.ndarray, buckets: int | Tensor, max_buckets: int | None) -> np.ndarray:
    """bucketize in place on the uint64 hash bits z (the same rows as the torch steps)."""
    if isinstance(buckets, int):
        if buckets < FAST_RANGE_LIMIT:
            if buckets & (buckets - 1) == 0:  # bits [39 - b, 39) of the hash
                np.right_shift(z, FAST_BITS - (buckets.bit_length() - 1), out=z)
                z &= np.uint64(buckets - 1)
                return z
            z &= np.uint64(_LOW)
            z *= np.uint64(buckets)
            z >>= np.uint64(FAST_BITS)
            return z
        if buckets & (buckets - 1) == 0:
            z &= np.uint64(buckets - 1)
        else:
            z &= np.uint64(MASK63)
            z %= np.uint64(buckets)
        return z
    sizes = _u64(buckets)
    largest = int(buckets.max()) if max_buckets is None else max_buckets
    if largest < FAST_RANGE_LIMIT:
        z &= np.uint64(_LOW)
        z *= sizes
        z >>= np.uint64(FAST_BITS)
        return z
    low = (z & np.uint64(_LOW)) * sizes >> np.uint64(FAST_BITS)  # may wrap where sizes are large: unused
    z &= np.uint64(MASK63)
    z %= sizes
    return np.where(sizes < FAST_RANGE_LIMIT, low, z)


def _bucketize_torch(hashes: Tensor, buckets: int | Tensor, max_buckets: int | None = None) -> Tensor:
    """bucketize in torch ops, for devices numpy cannot reach."""
    if isinstance(buckets, int):
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


class Runs:
    """One int64 per id, given per run of ids: `values[r]` for each of the `counts[r]` ids of
    run r, the runs end to end. A hashed table's features are runs of its ids, each with its
    salt and size: the kernel reads R values where an [N] array would add a memory stream as
    large as the ids (its time goes to streams); the numpy and torch paths read `per_id`,
    spread once and kept. (A plain class: a dataclass needs its module registered, which a
    test that loads this file alone does not do.)"""

    def __init__(self, values: Tensor, counts: Tensor) -> None:
        for name, t in (("values", values), ("counts", counts)):
            if t.dim() != 1 or t.dtype != torch.int64:
                raise ValueError(f"Runs.{name} must be a 1-d int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if values.shape != counts.shape:
            raise ValueError(
                f"Runs.values and Runs.counts must have one entry per run, got {values.numel()} values "
                f"and {counts.numel()} counts"
            )
        self.values = values  # [R] int64
        self.counts = counts  # [R] int64, ids per run

    @functools.cached_property
    def per_id(self) -> Tensor:
        """[N]: each id's value."""
        return torch.repeat_interleave(self.values, self.counts)

    @functools.cached_property
    def ends(self) -> Tensor:
        """[R]: where each run stops."""
        return torch.cumsum(self.counts, 0)

    @functools.cached_property
    def largest(self) -> int:
        return int(self.values.max()) if self.values.numel() else 0


def hash_to_buckets(
    ids: Tensor,
    salt: int | Tensor | Runs,
    buckets: int | Tensor | Runs,
    max_buckets: int | None = None,
    own_rows: int | Runs = 0,
) -> Tensor:
    """bucketize(salted_hash(ids, salt), buckets): the row of each id in a hashed table. A salt
    or size per id may come as a tensor [N] or as Runs of the (1-d) ids. Ids in [0, own_rows)
    keep their own row instead (a table with a row per id needs no hash); 0: all are hashed."""
    if isinstance(buckets, int) and buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if isinstance(own_rows, int) and own_rows < 0:
        raise ValueError(f"own_rows must be >= 0 (0: hash every id), got {own_rows}")
    if _numpy_ok(ids, *_tensors(salt), *_tensors(buckets)):
        kernel = _kernel()
        if kernel is not None and _native_ok(ids, salt, buckets, own_rows):
            return _hash_to_buckets_native(kernel, ids, salt, buckets, max_buckets, own_rows)
        rows = _hash_to_buckets_numpy(ids, _spread(salt), _spread(buckets), max_buckets)
    else:
        rows = _bucketize_torch(_salted_hash_torch(ids, _spread(salt)), _spread(buckets), max_buckets)
    return _keep_own_rows(ids, rows, own_rows)


def _keep_own_rows(ids: Tensor, rows: Tensor, own_rows: int | Runs) -> Tensor:
    """rows, with the ids in [0, own_rows) in place of theirs."""
    if isinstance(own_rows, int) and own_rows == 0:
        return rows
    ids = ids.long()  # an int32 comparison would wrap a bound of 2**31 or more
    return torch.where((ids >= 0) & (ids < _spread(own_rows)), ids, rows)


def _tensors(arg: int | Tensor | Runs) -> tuple[int | Tensor, ...]:
    return (arg.values,) if isinstance(arg, Runs) else (arg,)  # counts live beside the values


def _spread(arg: int | Tensor | Runs) -> int | Tensor:
    return arg.per_id if isinstance(arg, Runs) else arg


def _hash_to_buckets_numpy(ids: Tensor, salt: int | Tensor, buckets: int | Tensor, max_buckets: int | None) -> Tensor:
    """hash_to_buckets in numpy: one array, hashed and bucketized in place."""
    return _to_tensor(_bucketize_numpy_(_salted_hash_numpy(ids, salt), buckets, max_buckets))


def _kernel() -> ModuleType | None:
    """The one-pass C++ kernel of hash_to_buckets (recemb/native/hash.cpp), or None where it
    cannot be built or RECEMB_NATIVE=0."""
    try:
        from recemb import native
    except ImportError:  # this file loaded alone, outside its package
        return None
    return native.load("hash")


def _native_ok(ids: Tensor, salt: int | Tensor | Runs, buckets: int | Tensor | Runs, own_rows: int | Runs) -> bool:
    """Whether the kernel takes these (past `_numpy_ok`): a size below 2**63; tensors of the
    ids' shape (numpy would broadcast others); Runs of 1-d ids, over the same runs and not
    mixed with tensors."""
    if (isinstance(buckets, int) and buckets > MASK63) or (isinstance(own_rows, int) and own_rows > MASK63):
        return False
    args = (salt, buckets, own_rows)
    runs = [a for a in args if isinstance(a, Runs)]
    if runs:
        same = all(r.counts is runs[0].counts or torch.equal(r.counts, runs[0].counts) for r in runs[1:])
        return same and ids.dim() == 1 and not any(isinstance(a, Tensor) for a in args)
    return all(isinstance(a, int) or a.shape == ids.shape for a in args)


def _hash_to_buckets_native(
    kernel: ModuleType,
    ids: Tensor,
    salt: int | Tensor | Runs,
    buckets: int | Tensor | Runs,
    max_buckets: int | None,
    own_rows: int | Runs,
) -> Tensor:
    """hash_to_buckets by the C++ kernel: the same bits as the numpy path, in one pass."""
    salts = sizes = ends = owns = None
    if isinstance(own_rows, Runs):
        owns, ends = own_rows.values, own_rows.ends
    if isinstance(salt, Runs):
        salts, ends = salt.values, salt.ends
    elif isinstance(salt, Tensor):
        salts = salt.long()
    if isinstance(buckets, Runs):
        sizes, ends = buckets.values, buckets.ends
    elif isinstance(buckets, Tensor):
        sizes = buckets.long()
    largest = 0
    if sizes is not None:  # only its side of FAST_RANGE_LIMIT matters: clamped into int64
        if max_buckets is None:
            max_buckets = buckets.largest if isinstance(buckets, Runs) else int(sizes.max())
        largest = max(0, min(max_buckets, MASK63))
    salt_int = 0 if salts is not None else _signed(salt)  # type: ignore[arg-type]
    own = 0 if owns is not None else own_rows
    size = 0 if sizes is not None else buckets
    return kernel.hash_to_buckets(ids, salts, sizes, ends, owns, salt_int, size, own, largest)


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
