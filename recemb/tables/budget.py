"""Memory budgets shared by the compressed kinds: what `full` takes, and rows that fit a budget.

A kind accepts `budget` (bytes) or `budget_ratio` (a fraction of what `full` takes for the
same schema and dim). Budgets count parameters only (memory().bytes, no optimizer state),
so kinds compare at equal model size. Each kind turns its budget into sizes with
`fill_rows`, and reports bytes at or below the budget.
"""

from __future__ import annotations

from recemb.features import Schema
from recemb.storage.layout import BYTES_PER_FLOAT


def full_bytes(schema: Schema, dim: int) -> int:
    """Parameter bytes of `full` (oov='error') for `schema` at width `dim`: a row per raw id."""
    return sum(members[0].cardinality for members in schema.tables().values()) * dim * BYTES_PER_FLOAT


def check_budget_fields(owner: str, budget: int, budget_ratio: float, **sizes: int | None) -> None:
    """Validate a config's budget fields: at most one of them, and not with explicit sizes."""
    if budget < 0:
        raise ValueError(f"{owner}.budget must be >= 0 bytes (0: not set), got {budget}")
    if not 0 <= budget_ratio <= 1:
        raise ValueError(f"{owner}.budget_ratio must be in (0, 1] (0: not set), got {budget_ratio}")
    if budget and budget_ratio:
        raise ValueError(f"{owner}: give budget ({budget}) or budget_ratio ({budget_ratio}), not both")
    given = [name for name, value in sizes.items() if value is not None]
    if (budget or budget_ratio) and given:
        raise ValueError(
            f"{owner}: {given} and a budget both set the table sizes; give one "
            f"(budget={budget}, budget_ratio={budget_ratio})"
        )
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


def budget_floats(budget: int, budget_ratio: float, schema: Schema, dim: int) -> int | None:
    """The budget as a number of fp32 parameters, or None when neither field is set."""
    if budget_ratio:
        budget = int(budget_ratio * full_bytes(schema, dim))
    return budget // BYTES_PER_FLOAT if budget else None


def too_small(owner: str, budget: int, budget_ratio: float, need_bytes: int, what: str) -> ValueError:
    """The error for a budget below a kind's smallest configuration."""
    given = f"budget={budget} bytes" if budget else f"budget_ratio={budget_ratio}"
    return ValueError(
        f"{owner}: {given} is below the smallest configuration ({what}: {need_bytes} bytes); "
        f"raise the budget or lower the dim"
    )


def fill_rows(demands: list[int], total: int, minimums: list[int] | None = None) -> list[int] | None:
    """Rows per table, summing to at most `total`: min(demand, cap) clamped up to the table's
    minimum, with the largest cap that fits (water-filling: small tables keep every row they
    can use, large ones share what is left equally). None when even the minimums do not fit."""
    minimums = minimums or [1] * len(demands)
    if sum(minimums) > total:
        return None

    def rows(cap: int) -> list[int]:
        return [max(lo, min(d, cap)) for d, lo in zip(demands, minimums)]

    lo, hi = 0, max(demands)  # sum(rows(lo)) <= total holds; find the largest such cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(rows(mid)) <= total:
            lo = mid
        else:
            hi = mid - 1
    return rows(lo)
