"""Seeded synthetic CTR data with a planted model, so the best achievable AUC is known.

Ids. Each sparse feature's ids follow a truncated Zipf law over [0, cardinality): ranks
k = 1..n are drawn with P(k) ∝ k^-zipf by rejection-inversion (Hörmann & Derflinger 1996),
which needs O(1) memory whatever the cardinality (1e8 is fine), then scrambled to ids by an
affine bijection id = (a·(k-1) + b) mod n, gcd(a, n) = 1, seeded by (seed, table): frequent
ids are spread over the id space instead of being the small ones, and features sharing a
table (a target item and a history of items) share which ids are popular.

Labels. logit = bias + signal_std · (sum of T terms) / √T, each term centred and scaled to
mean 0 and variance 1 under the id distribution:
- per single feature, a weight w(id) ~ N(0, 1);
- per planted pair of single features (f, g), <z(id_f), z(id_g)> with latent vectors
  z ~ N(0, I_latent_dim);
- the dense features x ~ N(0, I) times a fixed unit vector;
- per multi-hot bag, the sum of its ids' (standardized) weights / √length (0 when empty);
- per sequence sharing a table with a single "target" feature, the sum over its items of
  (standardized) <z(target), z(item)>, / √length: DIN's target attention in its simplest
  form; a sequence with its own table uses weights w like a bag.
Weights and latent vectors are standard normals made from a salted 64-bit hash (splitmix64)
of (seed, table, slot, id): no table of `cardinality` rows is ever built, and features that
share a table share their ids' vectors. The means and variances used to standardize come
from the 4,096 most frequent ranks plus the tail's mass (whose hashed normals average to the
prior), again O(1) in the cardinality. Without the centring, the heavy ids of a feature with
a handful of values would shift the click rate by seed. bias = logit(base_ctr)·√(1 + π·signal_std²/8),
the probit approximation that makes E[sigmoid(bias + signal)] ≈ base_ctr for a normal signal.
Label ~ Bernoulli(sigmoid(logit)).

Bayes-optimal AUC. The generator knows each row's true click probability p, and no model
can rank rows better than p does. `bayes_auc(labels, p)` is the ROC AUC of p against the
labels drawn on the same rows (`generate_with_truth` returns both). For the default config
(20,000 rows, seed 0) it is 0.830 with a click rate of 0.194; seeds 0-4 give 0.823-0.835,
and `criteo_like_config` (50,000 rows) 0.832-0.837. Read a model's test AUC against that ceiling,
not against 1: high-cardinality features have many rare ids whose weights no model can
learn from few rows, so the reachable AUC is lower still.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recemb.data.batch import CTRData, Jagged
from recemb.features import FeatureSpec, Schema

# Affine scrambling computes a·(k-1) with a, k < cardinality in int64: keep n² < 2^63.
MAX_CARDINALITY = 2**31

# Bayes-optimal AUC of SyntheticConfig() (seed 0), as documented above and checked by the tests.
DEFAULT_BAYES_AUC = 0.830

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities, C1..C26.
CRITEO_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate: sizes, id skew and the planted model that makes the labels."""

    rows: int = 20_000
    cardinalities: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000, 1_000_000)  # C1..Cn
    zipf: float = 1.1  # P(rank k) ∝ k^-zipf
    n_dense: int = 4
    multi_hot: int = 1  # number of multi-hot features M1..
    multi_hot_max: int = 5  # bag length uniform in [0, multi_hot_max]
    multi_hot_cardinality: int = 1_000
    multi_hot_pooling: Literal["sum", "mean"] = "mean"
    sequences: int = 1  # number of sequence features S1..
    sequence_max_len: int = 10  # history length uniform in [0, sequence_max_len]
    # Index into `cardinalities` of the single feature (the target item) whose table the
    # sequences share; None gives each sequence its own table of `sequence_cardinality`.
    sequence_target: int | None = -1
    sequence_cardinality: int = 10_000
    seed: int = 0
    # planted model
    base_ctr: float = 0.2
    signal_std: float = 1.6  # std of the logit around its bias: sets the Bayes AUC
    interactions: int = 3  # planted pairs of single features (fewer if there are fewer pairs)
    latent_dim: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        if self.seed < 0:
            raise ValueError(f"SyntheticConfig.seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        positive = {"rows": self.rows, "latent_dim": self.latent_dim}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {value}")
        non_negative = {
            "n_dense": self.n_dense, "multi_hot": self.multi_hot, "multi_hot_max": self.multi_hot_max,
            "sequences": self.sequences, "interactions": self.interactions,
        }  # fmt: skip
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {value}")
        named_cards = [(f"cardinalities[{i}]", c) for i, c in enumerate(self.cardinalities)]
        named_cards += [("multi_hot_cardinality", self.multi_hot_cardinality)]
        named_cards += [("sequence_cardinality", self.sequence_cardinality)]
        for name, c in named_cards:
            if not 1 <= c <= MAX_CARDINALITY:
                raise ValueError(f"SyntheticConfig.{name} must be in [1, 2**31], got {c}")
        if not self.cardinalities and not self.multi_hot and not self.sequences:
            raise ValueError("SyntheticConfig needs at least one sparse feature: cardinalities, multi_hot or sequences")
        if not self.zipf > 0:
            raise ValueError(f"SyntheticConfig.zipf must be > 0 (near 0 is near uniform), got {self.zipf}")
        if self.multi_hot_pooling not in ("sum", "mean"):
            raise ValueError(
                f"SyntheticConfig.multi_hot_pooling must be 'sum' or 'mean', got {self.multi_hot_pooling!r}"
            )
        if self.sequences and self.sequence_max_len < 1:
            raise ValueError(
                f"SyntheticConfig.sequence_max_len must be >= 1 with sequences, got {self.sequence_max_len}"
            )
        n = len(self.cardinalities)
        if self.sequences and self.sequence_target is not None and not -n <= self.sequence_target < n:
            raise ValueError(
                f"SyntheticConfig.sequence_target must index `cardinalities` (length {n}) or be None "
                f"for sequences with their own table, got {self.sequence_target}"
            )
        if not 0 < self.base_ctr < 1:
            raise ValueError(f"SyntheticConfig.base_ctr must be in (0, 1), got {self.base_ctr}")
        if not self.signal_std >= 0:
            raise ValueError(f"SyntheticConfig.signal_std must be >= 0, got {self.signal_std}")


def criteo_like_config(rows: int, cap: int = 1_000_000, seed: int = 0) -> SyntheticConfig:
    """13 dense and 26 single features with Criteo Kaggle's cardinalities, each capped at `cap`
    (the full ones need ~30M rows of tables; the cap keeps a benchmark on one machine)."""
    if cap < 1:
        raise ValueError(f"criteo_like_config cap must be >= 1, got {cap}")
    return SyntheticConfig(
        rows=rows,
        cardinalities=tuple(min(c, cap) for c in CRITEO_CARDINALITIES),
        n_dense=13,
        multi_hot=0,
        sequences=0,
        seed=seed,
        interactions=6,
    )


def schema_for(cfg: SyntheticConfig) -> Schema:
    """C1..Cn single, M1.. multi-hot, S1.. sequences (sharing the target's table), I1.. dense."""
    singles = [FeatureSpec(f"C{i + 1}", c) for i, c in enumerate(cfg.cardinalities)]
    bags = [
        FeatureSpec(f"M{i + 1}", cfg.multi_hot_cardinality, "multi_hot", pooling=cfg.multi_hot_pooling)
        for i in range(cfg.multi_hot)
    ]
    if cfg.sequence_target is None or not cfg.sequences:
        seq_card, seq_table = cfg.sequence_cardinality, None
    else:
        target = singles[cfg.sequence_target]
        seq_card, seq_table = target.cardinality, target.name
    seqs = [
        FeatureSpec(f"S{i + 1}", seq_card, "sequence", max_len=cfg.sequence_max_len, table=seq_table)
        for i in range(cfg.sequences)
    ]
    return Schema(tuple(singles + bags + seqs), dense=tuple(f"I{i + 1}" for i in range(cfg.n_dense)))


def generate(cfg: SyntheticConfig) -> CTRData:
    """The dataset `cfg` describes; the same config always gives the same data."""
    return generate_with_truth(cfg)[0]


def generate_with_truth(cfg: SyntheticConfig) -> tuple[CTRData, Tensor]:
    """The dataset and each row's true click probability [N] (float64) under the planted model."""
    schema = schema_for(cfg)
    n = cfg.rows
    model_rng = _rng(cfg.seed, 0)  # streams: 0 model, 1 single ids, 2 dense, 3/4 bag lengths/ids, 5 labels
    terms: list[np.ndarray] = []  # each [N], mean 0 and about unit variance

    # single features: first-order weights
    single_specs = [f for f in schema.sparse if f.kind == "single"]
    singles, pops = [], []
    for j, spec in enumerate(single_specs):
        pop = _Popularity.of(cfg.seed, spec.table_name, spec.cardinality, cfg.zipf)
        ids = pop.sample(_rng(cfg.seed, 1, j), n)
        singles.append(ids)
        pops.append(pop)
        mean, second = pop.weight_moments()
        terms.append(_standardize(_normal(cfg.seed, spec.table_name, 0, ids), mean, second))
    # planted pairwise interactions
    if cfg.interactions and len(singles) > 1:
        pairs = [(a, b) for a in range(len(singles)) for b in range(a + 1, len(singles))]
        for p in model_rng.choice(len(pairs), size=min(cfg.interactions, len(pairs)), replace=False):
            a, b = pairs[int(p)]
            za = _latent(cfg.seed, single_specs[a].table_name, singles[a], cfg.latent_dim)
            zb = _latent(cfg.seed, single_specs[b].table_name, singles[b], cfg.latent_dim)
            (ma, sa), (mb, sb) = pops[a].latent_moments(cfg.latent_dim), pops[b].latent_moments(cfg.latent_dim)
            # a and b are independent: E<za,zb> = <ma,mb>, E<za,zb>^2 = <Ma,Mb>_F
            terms.append(_standardize((za * zb).sum(1), ma @ mb, float((sa * sb).sum())))
    # dense: linear effect of unit variance
    dense = _rng(cfg.seed, 2).standard_normal((n, cfg.n_dense))  # [N, n_dense]
    if cfg.n_dense:
        beta = model_rng.standard_normal(cfg.n_dense)
        terms.append(dense @ (beta / np.linalg.norm(beta)))

    jagged: dict[str, Jagged] = {}
    for spec in schema.sparse:
        if spec.kind == "single":
            continue
        k = schema.names.index(spec.name)
        top = cfg.multi_hot_max if spec.kind == "multi_hot" else spec.max_len
        lengths = _rng(cfg.seed, 3, k).integers(0, top + 1, size=n)
        pop = _Popularity.of(cfg.seed, spec.table_name, spec.cardinality, cfg.zipf)
        values = pop.sample(_rng(cfg.seed, 4, k), int(lengths.sum()))
        row = np.repeat(np.arange(n), lengths)  # owner row of each value
        if spec.is_sequence and spec.table is not None:
            # target attention: target and item are independent draws of the same table
            target = singles[schema.names.index(spec.table)]
            z_target = _latent(cfg.seed, spec.table_name, target, cfg.latent_dim)[row]
            z_items = _latent(cfg.seed, spec.table_name, values, cfg.latent_dim)
            m, sm = pop.latent_moments(cfg.latent_dim)
            per_value = _standardize((z_target * z_items).sum(1), m @ m, float((sm * sm).sum()))
        else:
            per_value = _standardize(_normal(cfg.seed, spec.table_name, 0, values), *pop.weight_moments())
        terms.append(np.bincount(row, per_value, minlength=n) / np.sqrt(np.maximum(lengths, 1)))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        jagged[spec.name] = Jagged(torch.from_numpy(values), torch.from_numpy(offsets.astype(np.int64)))

    signal = cfg.signal_std * np.sum(terms, axis=0) / math.sqrt(len(terms)) if terms else np.zeros(n)
    bias = math.log(cfg.base_ctr / (1 - cfg.base_ctr)) * math.sqrt(1 + math.pi * cfg.signal_std**2 / 8)
    prob = 1.0 / (1.0 + np.exp(-(bias + signal)))  # [N]
    labels = (_rng(cfg.seed, 5).random(n) < prob).astype(np.float32)

    single = np.stack(singles, axis=1) if singles else np.zeros((n, 0), dtype=np.int64)  # [N, n_single]
    data = CTRData(
        schema,
        torch.from_numpy(single),
        jagged,
        torch.from_numpy(dense.astype(np.float32)),
        torch.from_numpy(labels),
    )
    return data, torch.from_numpy(prob)


def bayes_auc(labels: Tensor, prob: Tensor) -> float:
    """ROC AUC of the true probabilities against the drawn labels: the best any model can do
    on these rows (up to the sampling noise of the rows themselves)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), prob.numpy()))


# -- ids ----------------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per component, so adding a feature leaves the others' ids."""
    return np.random.default_rng([seed, *stream])


@dataclass(frozen=True, eq=False)
class _Popularity:
    """The id distribution of one table: Zipf ranks scrambled to ids by k -> a·(k-1) + b mod n.

    (a, b) come from (seed, table), so features sharing a table share which ids are popular
    (a target item and the histories it appears in). The `top` ranks are enough for the
    moments of any hashed function of the id: past them the mass is small and spread over
    ids whose hashed normals average out to the prior N(0, 1).
    """

    n: int
    s: float
    a: int
    b: int
    top_ids: np.ndarray  # [K] ids of ranks 1..K
    top_p: np.ndarray  # [K] their probabilities
    tail: float  # probability of the ranks past K
    seed: int
    table: str

    @classmethod
    def of(cls, seed: int, table: str, n: int, s: float, top: int = 4096) -> _Popularity:
        a = int(_salt(seed, table, -1)) % (n - 1) + 1 if n > 1 else 1
        while math.gcd(a, n) != 1:  # a coprime to n makes the map a bijection mod n
            a = a % (n - 1) + 1
        b = int(_salt(seed, table, -2)) % n
        k = np.arange(1, min(n, top) + 1, dtype=np.float64)
        head = k**-s
        # the ranks past K by the midpoint rule: ∑_{K<k<=n} k^-s ≈ ∫_{K+1/2}^{n+1/2} x^-s dx
        tail = float(_h_integral(np.array(n + 0.5), s) - _h_integral(np.array(k.size + 0.5), s))
        total = head.sum() + tail
        ids = (a * (k.astype(np.int64) - 1) + b) % n
        return cls(n, s, a, b, ids, head / total, tail / total, seed, table)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` ids in [0, n) (int64)."""
        ranks = _zipf_ranks(rng, size, self.n, self.s)  # in [1, n]
        return (self.a * (ranks - 1) + self.b) % self.n  # a·(k-1) < n² < 2^63

    def weight_moments(self) -> tuple[float, float]:
        """E w(id) and E w(id)² for the first-order weight w (slot 0)."""
        w = _normal(self.seed, self.table, 0, self.top_ids)
        return float(self.top_p @ w), float(self.top_p @ (w * w) + self.tail)

    def latent_moments(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """E z(id) [dim] and E z zᵀ [dim, dim] for the latent vectors."""
        z = _latent(self.seed, self.table, self.top_ids, dim)  # [K, dim]
        return self.top_p @ z, (z * self.top_p[:, None]).T @ z + self.tail * np.eye(dim)


def _zipf_ranks(rng: np.random.Generator, size: int, n: int, s: float) -> np.ndarray:
    """Ranks in [1, n] with P(k) ∝ k^-s, by rejection-inversion (Hörmann & Derflinger 1996,
    as in Apache Commons RNG's RejectionInversionZipfSampler): exact, O(1) memory, and it
    accepts more than 90% of proposals, so a few vectorized rounds finish."""
    out = np.ones(size, dtype=np.int64)
    if n == 1 or size == 0:
        return out
    h_x1 = _h_integral(np.array(1.5), s) - 1.0
    h_n = _h_integral(np.array(n + 0.5), s)
    squeeze = 2.0 - _h_integral_inverse(_h_integral(np.array(2.5), s) - 2.0**-s, s)
    todo = np.arange(size)
    while todo.size:
        u = h_n + rng.random(todo.size) * (h_x1 - h_n)
        x = _h_integral_inverse(u, s)
        k = np.clip(np.floor(x + 0.5), 1, n)
        accept = (k - x <= squeeze) | (u >= _h_integral(k + 0.5, s) - np.exp(-s * np.log(k)))
        out[todo[accept]] = k[accept].astype(np.int64)
        todo = todo[~accept]
    return out


def _h_integral(x: np.ndarray, s: float) -> np.ndarray:
    """∫_1^x t^-s dt, written to stay accurate near s = 1."""
    log_x = np.log(x)
    return _expm1_over(np.asarray((1.0 - s) * log_x)) * log_x


def _h_integral_inverse(y: np.ndarray, s: float) -> np.ndarray:
    t = np.maximum(np.asarray(y * (1.0 - s)), -1.0)
    return np.exp(_log1p_over(t) * y)


def _expm1_over(x: np.ndarray) -> np.ndarray:
    """expm1(x) / x, 1 at x = 0."""
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 + x / 2, np.expm1(safe) / safe)


def _log1p_over(x: np.ndarray) -> np.ndarray:
    """log1p(x) / x, 1 at x = 0 (x = -1 gives -inf, the limit the inverse needs)."""
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    with np.errstate(divide="ignore"):
        return np.where(small, 1.0 - x / 2, np.log1p(safe) / safe)


# -- hash-made weights ----------------------------------------------------------------------


def _salt(seed: int, table: str, slot: int) -> np.uint64:
    """A stable 64-bit salt (Python's hash() is randomized per process, so not that)."""
    digest = hashlib.blake2b(f"{seed}/{table}/{slot}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output mix: a bijection on 64 bits with good avalanche."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _normal(seed: int, table: str, slot: int, ids: np.ndarray) -> np.ndarray:
    """A standard normal per id, a pure function of (seed, table, slot, id): Box-Muller on the
    two 32-bit halves of one hash."""
    h = _splitmix64(ids.astype(np.uint64) ^ _salt(seed, table, slot))
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) / 2.0**32  # (0, 1]
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _standardize(x: np.ndarray, mean: float, second: float) -> np.ndarray:
    """(x - E x) / std x, given E x and E x² under the id distribution; 0 if x is constant."""
    var = second - mean * mean
    return (x - mean) / math.sqrt(var) if var > 1e-9 else np.zeros_like(x)


def _latent(seed: int, table: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """Latent vectors z(id) ~ N(0, I_dim) [len(ids), dim]; slot 0 is the first-order weight."""
    return np.stack([_normal(seed, table, 1 + d, ids) for d in range(dim)], axis=1)
