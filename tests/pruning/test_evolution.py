"""The evolutionary search: every scored candidate fits the budget, it finds a known best,
and a budget below the smallest configuration is refused."""

from __future__ import annotations

import pytest

from recemb.pruning.evolution import BudgetError, EvolutionConfig, evolve

ROWS = [1000, 50, 400, 10, 2000, 120]  # rows per gene: a width costs rows x width x 4 bytes
VALUE = [1.0, 5.0, 0.5, 3.0, 0.2, 2.0]  # how much a gene's width is worth
CHOICES = [4, 8, 12, 16]


def cost(c: tuple[int, ...]) -> int:
    return sum(r * w * 4 for r, w in zip(ROWS, c))


def score(c: tuple[int, ...]) -> float:
    return sum(v * w for v, w in zip(VALUE, c))


@pytest.mark.parametrize("budget", [cost((4,) * 6), 120_000, 200_000, None])
def test_every_scored_candidate_fits_the_budget(budget):
    result = evolve(CHOICES, len(ROWS), cost, score, budget, EvolutionConfig(generations=8, seed=1))
    assert result.evaluated, "candidates were scored"
    if budget is not None:
        assert all(c <= budget for _, c in result.evaluated.values())
        assert result.cost <= budget
    assert result.score == max(s for s, _ in result.evaluated.values())
    assert len(result.generations) == 8


def test_it_finds_the_best_candidate_of_a_small_problem():
    budget = 120_000
    best = max(
        (
            (a, b, c, d, e, f)
            for a in CHOICES
            for b in CHOICES
            for c in CHOICES
            for d in CHOICES
            for e in CHOICES
            for f in CHOICES
        ),
        key=lambda x: score(x) if cost(x) <= budget else -1,
    )
    result = evolve(CHOICES, len(ROWS), cost, score, budget, EvolutionConfig(generations=25, seed=0))
    assert result.score >= 0.97 * score(best)
    assert result.generations[-1]["best"] >= result.generations[0]["best"]


def test_without_a_budget_it_takes_the_widest():
    result = evolve(CHOICES, len(ROWS), cost, score, None, EvolutionConfig(generations=15, seed=0))
    assert result.best == (16,) * 6


def test_a_budget_below_the_smallest_configuration_is_refused():
    with pytest.raises(
        BudgetError, match=r"budget=100 bytes is below the smallest configuration \(.* bytes, every gene at 4\)"
    ):
        evolve(CHOICES, len(ROWS), cost, score, 100, EvolutionConfig())
