"""Evolutionary search over one choice per gene (OptEmbed's widths per table) under a budget.

As the official OptEmbed search: a random population, then per generation the candidates
are scored (validation AUC of the supernet with those widths, no retraining), sorted, and
the next population is the `keep` best plus `mutations` mutants (each gene redrawn with
probability `mutation_prob`) and `crossovers` single-point crossovers of parents drawn from
the best. Unlike the official code, which ignores memory, every candidate is repaired to
fit the budget before it is scored: while over it, one gene (drawn with probability
proportional to the bytes a step down saves) takes the next smaller choice. Scores are
cached, so a candidate kept or bred twice is scored once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Candidate = tuple[int, ...]


@dataclass(frozen=True)
class EvolutionConfig:
    generations: int = 10
    keep: int = 10
    mutations: int = 10
    crossovers: int = 10
    mutation_prob: float = 0.1
    seed: int = 0

    @property
    def population(self) -> int:
        return self.keep + self.mutations + self.crossovers


@dataclass
class SearchResult:
    best: Candidate
    score: float
    cost: int
    generations: list[dict[str, float]] = field(default_factory=list)  # best / mean score per generation
    evaluated: dict[Candidate, tuple[float, int]] = field(default_factory=dict)  # candidate -> (score, cost)


class BudgetError(ValueError):
    """Even the smallest choice of every gene costs more than the budget."""


def evolve(
    choices: Sequence[int],
    genes: int,
    cost: Callable[[Candidate], int],
    score: Callable[[Candidate], float],
    budget: int | None,
    cfg: EvolutionConfig,
) -> SearchResult:
    """The best-scoring candidate (one of `choices`, ascending, per gene) of cost <= budget."""
    choices = sorted(choices)
    rng = random.Random(cfg.seed)
    smallest = tuple([choices[0]] * genes)
    if budget is not None and cost(smallest) > budget:
        raise BudgetError(
            f"budget={budget} bytes is below the smallest configuration ({cost(smallest)} bytes, "
            f"every gene at {choices[0]})"
        )
    evaluated: dict[Candidate, tuple[float, int]] = {}

    def repair(c: list[int]) -> Candidate:
        while budget is not None and cost(tuple(c)) > budget:
            now = cost(tuple(c))
            savings = []
            for g in range(genes):
                i = choices.index(c[g])
                if i:
                    savings.append((g, now - cost(tuple(c[:g] + [choices[i - 1]] + c[g + 1 :]))))
            total = sum(max(s, 0) for _, s in savings)
            if total > 0:
                g = rng.choices([g for g, _ in savings], weights=[max(s, 0) for _, s in savings])[0]
            else:
                g = rng.choice([g for g, _ in savings])
            c[g] = choices[choices.index(c[g]) - 1]
        return tuple(c)

    def scored(c: Candidate) -> float:
        if c not in evaluated:
            evaluated[c] = (score(c), cost(c))
        return evaluated[c][0]

    population = [repair([rng.choice(choices) for _ in range(genes)]) for _ in range(max(cfg.population, 1))]
    history = []
    for generation in range(cfg.generations):
        population = sorted(set(population), key=lambda c: (-scored(c), evaluated[c][1]))
        scores = [evaluated[c][0] for c in population]
        history.append({"generation": generation, "best": scores[0], "mean": sum(scores) / len(scores)})
        log.info(
            "evolution generation %d: best %.5f, mean %.5f, %d scored",
            generation,
            scores[0],
            history[-1]["mean"],
            len(evaluated),
        )
        parents = population[: max(cfg.keep, 2)]
        mutants = [
            repair([rng.choice(choices) if rng.random() < cfg.mutation_prob else g for g in rng.choice(parents)])
            for _ in range(cfg.mutations)
        ]
        children = []
        for _ in range(cfg.crossovers):
            a, b = rng.choice(parents), rng.choice(parents)
            cut = rng.randint(1, max(genes - 1, 1))
            children.append(repair(list(a[:cut] + b[cut:])))
        population = population[: cfg.keep] + mutants + children
    for c in population:  # the last generation's offspring are scored too
        scored(c)
    best = max(evaluated, key=lambda c: (evaluated[c][0], -evaluated[c][1]))
    return SearchResult(best, evaluated[best][0], evaluated[best][1], history, evaluated)
