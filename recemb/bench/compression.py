"""`recemb bench compression`: every table kind at a ladder of memory budgets, on one dataset.

The protocol of the VLDB'24 benchmark "Experimental Analysis of Large-scale Learnable Vector
Storage Compression" (Zhang et al.), on the user's own data: methods compare at equal memory.

- A budget b is a fraction of what `full` takes for the dataset's schema at width --dim
  (parameter bytes, no optimizer state; see recemb/tables/budget.py). A compressed kind runs
  as `kind:dim=D,budget_ratio=b`: budget 1 is each kind at `full`'s bytes.
- `full` is the reference line: it runs at budget 1 with width D. At a budget b < 1 it runs
  with the widest width that fits, a multiple of 4 (the TBE store's widths) and at most
  D·b, i.e. `full:dim=4` at b = 0.25 with D = 16; below width 4 it is infeasible.
- A kind whose smallest configuration does not fit a budget is reported as infeasible
  (with the kind's reason), not run. Kinds without a `budget_ratio` setting (composite
  kinds such as `decoupled`, which pairs two inner kinds) are skipped by `--kinds all`.
- Every run reads the same data split: the same training rows and the same test rows. Each
  (kind, budget) trains once per seed (the dense weights, the store's rows and, for kinds
  that hash, their salts all follow the seed); AUC and log loss are reported as mean ± std
  over seeds.
- The summary names the best kind at each budget (highest mean test AUC) and gives a 95%
  paired bootstrap interval of its AUC difference against `full` at budget 1 and against
  the runner-up at the same budget, on the same test rows (resampled together, the AUC
  averaged over seeds within each resample): an interval that straddles 0 means the test
  set cannot tell the two apart (on 2,000 test rows an AUC's standard error is ~0.015).
  --pairs A:B,... adds the same interval for B's AUC minus A's at every budget where both
  ran (e.g. `--pairs hashed:unified`).

Outputs under --out: compression.csv (one row per kind and budget), compression.png (test
AUC against table bytes, log-scaled, one line per kind), compression.md (the tables as
markdown), compression.json (everything, per-seed metrics, environment). samples/s is
training throughput on this machine, one thread by default (--threads): on a shared machine
it is noisy and only roughly comparable. The valid AUC column (each run's chosen epoch) is
the one to choose settings by; choosing by test AUC would tune on the test rows.

--jobs N trains N runs at a time in worker processes (parallel_runs.py), --threads torch
threads each; every run seeds itself, so the metrics are those of --jobs 1 (samples/s is not:
concurrent runs share the machine). --init-std sets every kind's initial row spread.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recemb.bench.parallel_runs import run_tasks
from recemb.config import load_config_file
from recemb.data import DataSplits, load_dataset
from recemb.run import DEFAULTS, environment, merge_config, run_training
from recemb.storage import StoreSettings
from recemb.tables import KINDS, build_embedding, table_from_mapping
from recemb.tables.budget import full_bytes

DEFAULT_BUDGETS: tuple[float, ...] = (1.0, 0.1, 0.01)
REFERENCE = "full"
MIN_FULL_DIM = 4  # the TBE store's widths are multiples of 4
# the training protocol when no --config gives one: AutoInt's paper setting, few epochs
BASE_CONFIG: dict[str, Any] = {
    "split": [0.7, 0.1, 0.2],
    "model": {"name": "autoint"},
    "train": {"epochs": 3, "batch_size": 256, "lr": 1e-3, "patience": 1},
    "store": {"backend": "tbe", "optimizer": {"name": "rowwise_adagrad", "lr": 0.05}},
}
CSV_COLUMNS: tuple[str, ...] = (
    "kind", "budget", "setting", "status", "bytes", "budget_bytes", "params", "optimizer_bytes",
    "auc_mean", "auc_std", "auc_se", "valid_auc_mean", "logloss_mean", "logloss_std", "samples_per_s", "seeds", "note",
)  # fmt: skip


@dataclass
class Cell:
    """One kind at one budget: its table setting and the runs of every seed."""

    kind: str
    budget: float
    table: dict[str, Any] | None  # the `table` section it trains with; None when infeasible
    note: str = ""
    failed: bool = False  # a run raised (its error in `note`): a bug to report, not a result
    over_budget: bool = False  # trained tables larger than the budget: shown, not ranked
    bytes: int = 0
    params: int = 0
    optimizer_bytes: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # run_training metrics, one per seed
    probs: list[np.ndarray] = field(default_factory=list, repr=False)  # test probabilities, one per seed

    @property
    def feasible(self) -> bool:
        return self.table is not None

    @property
    def status(self) -> str:
        return "failed" if self.failed else "ok" if self.feasible else "infeasible"

    @property
    def setting(self) -> str:
        if self.table is None:
            return ""
        values = {k: v for k, v in self.table.items() if k != "kind"}
        return f"{self.table['kind']}:" + ",".join(f"{k}={v}" for k, v in values.items())

    def mean(self, key: str) -> float:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return float(np.mean(values)) if values else math.nan

    def std(self, key: str) -> float:
        if not self.runs:
            return math.nan
        return float(np.std([r[key] for r in self.runs], ddof=1)) if len(self.runs) > 1 else 0.0

    def row(self, budget_bytes: int) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "budget": self.budget,
            "setting": self.setting,
            "status": self.status,
            "bytes": self.bytes if self.feasible else None,
            "budget_bytes": budget_bytes,
            "params": self.params or None,
            "optimizer_bytes": self.optimizer_bytes if self.feasible else None,
            "auc_mean": self.mean("auc"),
            "auc_std": self.std("auc"),
            "auc_se": self.mean("auc_se"),
            "valid_auc_mean": self.mean("valid_auc"),  # of each run's chosen epoch
            "logloss_mean": self.mean("logloss"),
            "logloss_std": self.std("logloss"),
            "samples_per_s": self.mean("samples_per_s"),
            "seeds": len(self.runs),
            "note": self.note,
        }


# -- which kinds, which tables -----------------------------------------------------------------
def select_kinds(text: str) -> tuple[list[str], dict[str, str]]:
    """`all` or a comma list -> (kinds to run, {kind left out: why}). `all` is `full` plus
    every registered kind with a budget_ratio setting; named kinds must have one too."""
    budgeted = [k for k, cls in KINDS.items() if "budget_ratio" in {f.name for f in dataclasses.fields(cls)}]
    others = {k: "no budget_ratio setting (a composite kind; give its inner kinds their own budgets)"
              for k in KINDS if k not in budgeted and k != REFERENCE}  # fmt: skip
    if text.strip() == "all":
        return [REFERENCE, *budgeted], others
    names = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise ValueError(f"--kinds must be 'all' or names from {sorted(KINDS)}, got {text!r}")
    refused = [k for k in names if k in others]
    if refused:
        raise ValueError(f"--kinds {refused}: {others[refused[0]]}; budgeted kinds: {[REFERENCE, *budgeted]}")
    return list(dict.fromkeys(names)), {}


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be fractions of full's bytes such as 1,0.1,0.01, got {text!r}") from None
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise ValueError(f"--budgets must be fractions in (0, 1], got {text!r}")
    return sorted(set(budgets), reverse=True)


def parse_pairs(text: str, kinds: list[str]) -> list[tuple[str, str]]:
    """`A:B,C:D` -> [(A, B), (C, D)], each kind one of the sweep's."""
    pairs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        a, sep, b = item.partition(":")
        if not sep or not a or not b or a == b:
            raise ValueError(f"--pairs items must be A:B with two different kinds, got {item!r}")
        missing = [k for k in (a, b) if k not in kinds]
        if missing:
            raise ValueError(f"--pairs {item!r}: {missing} not among the swept kinds {kinds}")
        pairs.append((a, b))
    return pairs


def table_for(kind: str, budget: float, dim: int) -> tuple[dict[str, Any] | None, str]:
    """The `table` section of `kind` at `budget` (None when it cannot fit), and a note."""
    if kind != REFERENCE:
        return {"kind": kind, "dim": dim, "budget_ratio": budget}, ""
    if budget >= 1:
        return {"kind": kind, "dim": dim}, "reference"
    width = int(dim * budget) // MIN_FULL_DIM * MIN_FULL_DIM
    if width < MIN_FULL_DIM:
        return None, f"full at this budget needs width {dim * budget:g} < {MIN_FULL_DIM}"
    return {"kind": kind, "dim": width}, f"full at a smaller width ({width})"


# -- the sweep ---------------------------------------------------------------------------------
def sweep(
    splits: DataSplits,
    base: dict[str, Any],
    kinds: list[str],
    budgets: list[float],
    seeds: int,
    dim: int,
    jobs: int = 1,
    threads: int = 1,
    table_options: dict[str, Any] | None = None,
) -> list[Cell]:
    """Train every feasible (kind, budget) once per seed on `splits`; cells in kind order.
    With jobs > 1 the runs go to that many worker processes, with the same results."""
    cells = plan(splits, kinds, budgets, dim, table_options or {})
    tasks = [(c, seed) for c, cell in enumerate(cells) if cell.feasible for seed in range(seeds)]
    configs = [_seeded(base, cells[c].table or {}, seed) for c, seed in tasks]
    outcomes: dict[tuple[int, int], dict[str, Any]] = {}
    failed: set[int] = set()  # cells with a failed run: their other seeds need not run
    for done, (index, outcome) in enumerate(
        run_tasks(_train, splits, configs, jobs, threads, skip=lambda i: tasks[i][0] in failed), 1
    ):
        c, seed = tasks[index]
        outcomes[c, seed] = outcome
        if "error" in outcome:
            failed.add(c)
        text = outcome.get("error") or f"AUC {outcome['metrics']['auc']:.4f}"
        _progress(f"    [{done}/{len(tasks)}] {cells[c].kind} at budget {cells[c].budget:g}, seed {seed}: {text} "
                  f"({outcome['seconds']:.0f} s)")  # fmt: skip
    budget_bytes = full_bytes(splits.train.schema, dim)
    for c, cell in enumerate(cells):
        if cell.feasible:
            _collect(cell, [outcomes.get((c, seed)) for seed in range(seeds)], int(cell.budget * budget_bytes))
    return cells


def plan(
    splits: DataSplits, kinds: list[str], budgets: list[float], dim: int, table_options: dict[str, Any]
) -> list[Cell]:
    """Every (kind, budget) in kind order: its table section and bytes, or why it cannot fit.
    `table_options` (e.g. init_std) go to every kind that has such a setting."""
    schema = splits.train.schema
    cells = []
    total = len(kinds) * len(budgets)
    for kind in kinds:
        fields = {f.name for f in dataclasses.fields(KINDS[kind])}
        options = {k: v for k, v in table_options.items() if k in fields}
        for budget in budgets:
            table, note = table_for(kind, budget, dim)
            cell = Cell(kind, budget, table if table is None else {**table, **options}, note)
            cells.append(cell)
            if cell.table is not None:
                try:  # a kind refuses a budget below its smallest configuration
                    memory = build_embedding(schema, table_from_mapping(cell.table), StoreSettings()).memory()
                except ValueError as e:
                    cell.table, cell.note = None, str(e)
                else:
                    cell.bytes, cell.params, cell.optimizer_bytes = memory.bytes, memory.params, memory.optimizer_bytes
            _progress(f"[{len(cells)}/{total}] {kind} at budget {budget:g}: "
                      + (cell.setting if cell.feasible else f"infeasible ({cell.note})"))  # fmt: skip
    return cells


def _train(splits: DataSplits, conf: dict[str, Any]) -> dict[str, Any]:
    """One run (in this process or a worker): its metrics and test predictions, or its error."""
    started = time.perf_counter()
    try:
        result = run_training(conf, data=splits)
    except Exception as e:  # noqa: BLE001 (one kind's bug must not lose an hour of others' runs)
        # kinds trained in stages check the budget against what they learned
        refused = isinstance(e, ValueError) and _refuses_budget(e)
        error = str(e) if refused else f"failed: {type(e).__name__}: {e}"
        return {"error": error, "refused": refused, "seconds": time.perf_counter() - started}
    return {"metrics": result.metrics, "probs": result.test_probs, "seconds": time.perf_counter() - started}


def _collect(cell: Cell, outcomes: list[dict[str, Any] | None], budget_bytes: int) -> None:
    """A cell's runs (one outcome per seed, None where a run was skipped after a failure);
    the first failure in seed order, if any, makes the cell failed or infeasible."""
    error = next((o for o in outcomes if o is not None and "error" in o), None)
    if error is not None:
        if error["refused"]:
            cell.table, cell.note = None, error["error"]
        else:
            cell.failed, cell.note = True, error["error"]
        return
    cell.runs = [o["metrics"] for o in outcomes if o is not None]
    cell.probs = [o["probs"] for o in outcomes if o is not None]
    # what the trained tables take: kinds trained in stages (pruning, search) report
    # their last stage's exported tables, smaller than the module built by `plan`
    cell.bytes = max(_trained_bytes(r) for r in cell.runs)
    cell.params = max(r["table_params"] for r in cell.runs) if "stages" not in cell.runs[0] else 0
    cell.optimizer_bytes = max(r["table_optimizer_bytes"] for r in cell.runs)
    notes = [cell.note] if cell.note else []
    if "stages" in cell.runs[0]:
        notes.append(f"trained in stages: {', '.join(cell.runs[0]['stages'])}; bytes of the last")
    if cell.kind != REFERENCE and cell.bytes > budget_bytes:
        cell.over_budget = True
        notes.append(f"over budget: {cell.bytes:,} > {budget_bytes:,} bytes, not ranked")
    cell.note = "; ".join(notes)


def _refuses_budget(error: ValueError) -> bool:
    """A kind's refusal of a budget too small for it (recemb.tables.budget.too_small, or a
    staged kind's check after its search), as opposed to a bug."""
    text = str(error)
    return "budget" in text and ("smallest configuration" in text or "cannot hold" in text)


def _trained_bytes(metrics: dict[str, Any]) -> int:
    stages = metrics.get("stages")
    if stages:
        last = list(stages.values())[-1]
        if "bytes" in last:
            return int(last["bytes"])
    return int(metrics["table_bytes"])


def _seeded(base: dict[str, Any], table: dict[str, Any], seed: int) -> dict[str, Any]:
    table = dict(table)
    if "seed" in {f.name for f in dataclasses.fields(KINDS[table["kind"]])}:
        table["seed"] = seed  # the kind's hash salts
    store = {**base["store"], "seed": seed}
    return merge_config(base, {"table": table, "train": {"seed": seed}, "store": store})


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- how sure a difference is -----------------------------------------------------------------
def bootstrap_auc_diff(
    labels: np.ndarray, probs_a: list[np.ndarray], probs_b: list[np.ndarray], rounds: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """mean AUC(b) - mean AUC(a) over each side's seeds, on the same rows, with a 95% paired
    bootstrap interval: each round draws the rows once (as multinomial counts) for both sides.
    With one seed a side it is metrics.paired_bootstrap_auc_diff, computed in O(N) a round."""
    labels = np.asarray(labels).astype(bool)
    prepared = [[_ranked(p, labels) for p in probs_a], [_ranked(p, labels) for p in probs_b]]
    ones = np.ones(len(labels))

    def diff(weights: np.ndarray) -> float:
        a, b = ([_weighted_auc(r, weights, labels) for r in side] for side in prepared)
        return float(np.mean(b) - np.mean(a))

    rng = np.random.default_rng(seed)
    n = len(labels)
    draws = []
    for _ in range(rounds):
        weights = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        if weights[labels].sum() and weights[~labels].sum():
            draws.append(diff(weights))
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    return diff(ones), float(low), float(high)


def _ranked(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's index among the sorted distinct scores, and how many there are."""
    _, inverse = np.unique(np.asarray(probs), return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _weighted_auc(ranked: tuple[np.ndarray, int], weights: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with row weights (ties count one half), as roc_auc_score on the
    rows repeated by their weights."""
    inverse, distinct = ranked
    pos = np.bincount(inverse, weights * labels, distinct)  # [distinct scores]
    neg = np.bincount(inverse, weights * ~labels, distinct)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def compare_pairs(
    cells: list[Cell], labels: np.ndarray, pairs: list[tuple[str, str]], rounds: int
) -> list[dict[str, Any]]:
    """Per pair (a, b) and budget where both ran: mean AUC(b) - AUC(a) with its 95% paired
    bootstrap interval on the test rows."""
    out = []
    for a, b in pairs:
        ran = {(c.kind, c.budget): c for c in cells if c.kind in (a, b) and c.runs}
        for budget in dict.fromkeys(c.budget for c in cells):
            if (a, budget) in ran and (b, budget) in ran:
                diff = bootstrap_auc_diff(labels, ran[a, budget].probs, ran[b, budget].probs, rounds)
                out.append({"a": a, "b": b, "budget": budget, "b_minus_a": list(diff)})
    return out


def summarize(cells: list[Cell], labels: np.ndarray, budgets: list[float], rounds: int) -> list[dict[str, Any]]:
    """Per budget: the best kind by mean AUC, the runner-up, and paired bootstrap intervals of
    the best one's AUC difference against full at budget 1 and against the runner-up."""
    reference = next((c for c in cells if c.kind == REFERENCE and c.budget >= 1 and c.runs), None)
    out = []
    for budget in budgets:
        eligible = (c for c in cells if c.budget == budget and c.runs and not c.over_budget)
        ranked = sorted(eligible, key=lambda c: -c.mean("auc"))
        entry: dict[str, Any] = {"budget": budget, "best": None, "runner_up": None}
        if ranked:
            best = ranked[0]
            entry |= {"best": best.kind, "best_setting": best.setting, "best_auc": best.mean("auc"),
                      "best_auc_std": best.std("auc"), "best_bytes": best.bytes}  # fmt: skip
            if reference is not None and best is not reference:
                entry["vs_full"] = list(bootstrap_auc_diff(labels, reference.probs, best.probs, rounds))
            if len(ranked) > 1:
                second = ranked[1]
                entry |= {"runner_up": second.kind, "runner_up_auc": second.mean("auc")}
                entry["vs_runner_up"] = list(bootstrap_auc_diff(labels, second.probs, best.probs, rounds))
        out.append(entry)
    return out


# -- outputs -----------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})  # .get: older sweeps' JSON


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def plot(path: Path, cells: list[Cell], title: str) -> None:
    """Test AUC (mean ± std over seeds) against table bytes, log-scaled; one line per kind,
    `full` at budget 1 as a dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for kind in dict.fromkeys(c.kind for c in cells):
        points = sorted((c for c in cells if c.kind == kind and c.runs), key=lambda c: c.bytes)
        if not points:
            continue
        xs, ys, errs = [c.bytes for c in points], [c.mean("auc") for c in points], [c.std("auc") for c in points]
        style = {"color": "black", "linewidth": 2, "zorder": 5} if kind == REFERENCE else {}
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=kind, **style)
    reference = next((c for c in cells if c.kind == REFERENCE and c.budget >= 1 and c.runs), None)
    if reference is not None:
        ax.axhline(reference.mean("auc"), color="black", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("embedding table bytes (parameters, log scale)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown: settings, one row per kind and budget, the summary."""
    s = result["settings"]
    name = s["data"].split(":")[0]
    lines = [
        (
            f"{s['model']} on {name}: {s['train_rows']:,} training rows, {s['test_rows']:,} test rows; table width "
            f"{s['dim']}, full = {s['full_bytes']:,} bytes; {s['seeds']} seed(s), {s['epochs']} epoch(s)."
        ),
        "",
        "| kind | budget | bytes | test AUC (mean ± std) | valid AUC | log loss | samples/s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["status"] == "ok":
            lines.append(
                f"| {r['kind']} | {r['budget']:g} | {r['bytes']:,} | {_fmt(r['auc_mean'], '.4f')} ± "
                f"{_fmt(r['auc_std'], '.4f')} | {_fmt(r.get('valid_auc_mean'), '.4f')} | {_fmt(r['logloss_mean'], '.4f')} "
                f"| {_fmt(r['samples_per_s'], ',.0f')} "
                f"| {r['note']} |"
            )
        else:
            lines.append(f"| {r['kind']} | {r['budget']:g} | — | {r['status']} | | | | {r['note'][:120]} |")
    lines += [
        "",
        "| budget | best kind | AUC | ΔAUC vs full at budget 1 [95% CI] | runner-up | ΔAUC vs runner-up [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for e in result["summary"]:
        if e["best"] is None:
            lines.append(f"| {e['budget']:g} | none feasible | | | | |")
            continue
        lines.append(
            f"| {e['budget']:g} | {e['best']} | {_fmt(e['best_auc'], '.4f')} | {_interval(e.get('vs_full'))} "
            f"| {e.get('runner_up') or '—'} | {_interval(e.get('vs_runner_up'))} |"
        )
    if result.get("pairs"):
        lines += ["", "| budget | pair | ΔAUC (second − first) [95% CI] |", "|---|---|---|"]
        lines += [f"| {p['budget']:g} | {p['b']} − {p['a']} | {_interval(p['b_minus_a'])} |" for p in result["pairs"]]
    return "\n".join(lines) + "\n"


def rewrite(out: str | Path) -> dict[str, Any]:
    """Rewrite compression.csv, .md and .png from a sweep's compression.json (after a change
    to how they are drawn; the summary's intervals need the test predictions, not kept)."""
    out = Path(out)
    result = json.loads((out / "compression.json").read_text())
    cells = cells_from_result(result)
    write_csv(out / "compression.csv", result["rows"])
    (out / "compression.md").write_text(markdown(result))
    s = result["settings"]
    plot(out / "compression.png", cells, _title(s["model"], s["data"], s["seeds"], s["dim"]))
    return result


def cells_from_result(result: dict[str, Any]) -> list[Cell]:
    """The cells of a sweep's JSON, with their per-seed metrics (not their predictions)."""
    cells = []
    for r in result["rows"]:
        cell = Cell(r["kind"], r["budget"], None, note=r["note"], bytes=r["bytes"] or 0)
        cell.runs = [m for m in result["runs"] if m["kind"] == r["kind"] and m["budget"] == r["budget"]]
        cell.over_budget = "over budget" in r["note"]
        cells.append(cell)
    return cells


def _title(model: str, data: str, seeds: int, dim: int) -> str:
    return f"{model} on {data.split(':')[0]}: test AUC against table bytes ({seeds} seed(s), dim {dim})"


def _fmt(value: float | None, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def _interval(value: list[float] | None) -> str:
    return "—" if not value else f"{value[0]:+.4f} [{value[1]:+.4f}, {value[2]:+.4f}]"


def print_tables(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"\ncompression benchmark: {s['model']} on {s['data']} ({s['train_rows']} train / {s['test_rows']} test "
        f"rows), dim {s['dim']}, full = {s['full_bytes']:,} bytes, {s['seeds']} seed(s), {s['epochs']} epoch(s)\n"
    )
    header = (
        f"{'kind':15s} {'budget':>7s} {'bytes':>11s} {'AUC mean ± std':>17s} {'logloss':>8s} {'samples/s':>10s}  note"
    )
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        if r["status"] == "ok":
            auc = f"{_fmt(r['auc_mean'], '.4f')} ± {_fmt(r['auc_std'], '.4f')}"
            print(
                f"{r['kind']:15s} {r['budget']:7g} {r['bytes']:11,d} {auc:>17s} {_fmt(r['logloss_mean'], '.4f'):>8s} "
                f"{_fmt(r['samples_per_s'], '.0f'):>10s}  {r['note']}"
            )
        else:
            print(f"{r['kind']:15s} {r['budget']:7g} {'—':>11s} {r['status']:>17s} {'':8s} {'':10s}  {r['note'][:90]}")
    print("\nbest kind per budget (ΔAUC: mean over seeds, 95% paired bootstrap interval on the test rows)\n")
    header = (
        f"{'budget':>7s} {'best':15s} {'AUC':>7s} {'ΔAUC vs full@1':>31s} {'runner-up':15s} {'ΔAUC vs runner-up':>31s}"
    )
    print(header)
    print("-" * len(header))
    for e in result["summary"]:
        if e["best"] is None:
            print(f"{e['budget']:7g} no feasible kind")
            continue
        print(
            f"{e['budget']:7g} {e['best']:15s} {_fmt(e['best_auc'], '.4f'):>7s} {_interval(e.get('vs_full')):>31s} "
            f"{e.get('runner_up') or '—':15s} {_interval(e.get('vs_runner_up')):>31s}"
        )
    if result.get("pairs"):
        print("\npairs (ΔAUC of the second kind minus the first, 95% paired bootstrap interval)\n")
        for p in result["pairs"]:
            print(f"{p['budget']:7g} {p['b'] + ' − ' + p['a']:31s} {_interval(p['b_minus_a']):>31s}")
    if result["skipped_kinds"]:
        print(f"\nskipped kinds: {result['skipped_kinds']}")
    print()


# -- the command -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="dataset spec, e.g. criteo:PATH, frappe:PATH (default: --config's, else synthetic)"
    )
    parser.add_argument("--config", help="zoo config (YAML/TOML) whose split, model, train and store sections to use")
    parser.add_argument("--model", help="model name (default: --config's, else autoint)")
    parser.add_argument("--kinds", default="all", help="'all' (full + every kind with a budget_ratio) or a comma list")
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS),
                        help="fractions of full's table bytes (default 1,0.1,0.01)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="training runs per kind and budget (seeds 0..N-1)")
    parser.add_argument("--dim", type=int, default=16, help="embedding width (full's, which sets the budgets)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: --config's, else 3)")
    parser.add_argument("--max-rows", type=int, help="read only the first N data lines (of each file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, in worker processes (default 1: in this process); same results")  # fmt: skip
    parser.add_argument("--init-std", type=float,
                        help="std of the tables' initial rows, for every kind (default: each kind's own)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds of the intervals")
    parser.add_argument("--pairs", default="",
                        help="A:B,...: ΔAUC of B minus A with its paired interval at every budget (e.g. hashed:unified)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 seed, 200 bootstrap rounds")
    parser.add_argument("--out", help="folder for compression.csv, .png, .md and .json (none written without it)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep, print the tables, write the files, return the results."""
    base = merge_config(DEFAULTS, BASE_CONFIG)
    if args.config:
        base = merge_config(base, {k: v for k, v in load_config_file(args.config).items() if k != "table"})
    if args.data:
        base["data"] = args.data
    if args.model:
        base["model"] = {"name": args.model} if args.model != base["model"].get("name") else base["model"]
    seeds, epochs, rounds = args.seeds, args.epochs, args.rounds
    if args.quick:
        seeds, epochs, rounds = 1, epochs or 1, min(rounds, 200)
    if epochs is not None:
        base["train"] = {**base["train"], "epochs": epochs}
    checked = (("seeds", seeds), ("dim", args.dim), ("threads", args.threads), ("jobs", args.jobs), ("rounds", rounds))
    for name, value in checked:
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.init_std is not None and not args.init_std > 0:
        raise ValueError(f"--init-std must be > 0, got {args.init_std}")
    table_options = {} if args.init_std is None else {"init_std": args.init_std}
    kinds, skipped = select_kinds(args.kinds)
    budgets = parse_budgets(args.budgets)
    pairs = parse_pairs(args.pairs, kinds)
    torch.set_num_threads(args.threads)

    options = {"max_rows": args.max_rows} if args.max_rows and not base["data"].startswith("synthetic") else {}
    splits = load_dataset(base["data"], tuple(base["split"]), **options)
    started = time.perf_counter()
    cells = sweep(splits, base, kinds, budgets, seeds, args.dim, args.jobs, args.threads, table_options)
    labels = splits.test.labels.numpy()
    reference_bytes = full_bytes(splits.train.schema, args.dim)
    result: dict[str, Any] = {
        "benchmark": "compression",
        "settings": {
            "data": base["data"],
            "model": base["model"]["name"],
            "kinds": kinds,
            "budgets": budgets,
            "seeds": seeds,
            "dim": args.dim,
            "epochs": base["train"].get("epochs"),
            "config": base,
            "threads": args.threads,
            "jobs": args.jobs,
            "table_options": table_options,
            "bootstrap_rounds": rounds,
            "full_bytes": reference_bytes,
            "train_rows": len(splits.train),
            "valid_rows": len(splits.valid),
            "test_rows": len(splits.test),
            "test_positive_rate": float(labels.mean()) if len(labels) else math.nan,
        },
        "environment": environment(),
        "rows": [c.row(int(c.budget * reference_bytes)) for c in cells],
        "summary": summarize(cells, labels, budgets, rounds),
        "pairs": compare_pairs(cells, labels, pairs, rounds),
        "skipped_kinds": skipped,
        "runs": [{"kind": c.kind, "budget": c.budget, "seed": s, **m} for c in cells for s, m in enumerate(c.runs)],
        "seconds": time.perf_counter() - started,
    }
    result = _finite(result)
    print_tables(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        files = {k: out / f"compression.{k}" for k in ("csv", "png", "json", "md")}
        write_csv(files["csv"], result["rows"])
        files["md"].write_text(markdown(result))
        plot(files["png"], cells, _title(result["settings"]["model"], base["data"], seeds, args.dim))
        result["files"] = {k: str(v) for k, v in files.items()}
        files["json"].write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _finite(value: Any) -> Any:
    """NaN (a metric that has no value, e.g. of an infeasible cell) -> None, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    return str(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m recemb.bench.compression", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    print(json.dumps(result, default=_json_default))
    return result


if __name__ == "__main__":
    main()
