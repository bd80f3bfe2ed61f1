"""`recemb plan`: a per-table configuration that fits a memory budget, from feature statistics.

It reads the training part of a dataset and counts, per logical table, its cardinality and
how often each id occurs; then proposes a `mixed_dim` table (the kind that takes a width
and a row count per table):
- rows: every table keeps a row per id (full) while rows at the smallest width (4) take at
  most `rows_share` of the budget; otherwise the largest tables are hashed into an equal
  cap of rows (the largest cap that fits: water-filling), small vocabularies staying full;
- widths: by frequency, d_t = λ·n_t^(−α) (Ginart et al.'s power rule) with n_t the table's
  effective number of ids, exp(entropy) of its id frequencies (a table where a few ids
  dominate counts as small and gets a wide vector), rounded to multiples of 4 in [4, dim],
  λ the largest that fits tables and projections in the budget.
The output is a config file (YAML or TOML) that `recemb train --config` reads.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recemb.data import load_dataset
from recemb.data.batch import CTRData
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.mixed_dim import WIDTH_MULTIPLE, check_dim, power_rule_widths

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str | int) -> int:
    """'8MB' (10^6), '8MiB' (2^20), '512kb', '1.5GB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"budget must be a number of bytes with an optional unit (B, KB, MB, GB, KiB, MiB, GiB), got {text!r}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class TableStats:
    name: str
    features: list[str]
    cardinality: int
    seen: int  # ids that occur in the training rows
    occurrences: int
    effective: float  # exp(entropy) of the id frequencies

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "features": self.features,
            "cardinality": self.cardinality,
            "seen_ids": self.seen,
            "occurrences": self.occurrences,
            "effective_ids": round(self.effective, 1),
        }


def table_stats(data: CTRData) -> list[TableStats]:
    """Per logical table: cardinality, ids seen and the frequency entropy over the rows of `data`."""
    schema = data.schema
    single = {f.name: i for i, f in enumerate(f for f in schema.sparse if f.kind == "single")}
    out = []
    for table, members in schema.tables().items():
        n = members[0].cardinality
        counts = torch.zeros(n, dtype=torch.long)
        for f in members:
            ids = data.single[:, single[f.name]] if f.name in single else data.jagged[f.name].values
            counts += torch.bincount(ids.long().clamp(0, n - 1), minlength=n)[:n]
        total = int(counts.sum())
        p = counts[counts > 0].double() / max(total, 1)
        effective = float(torch.exp(-(p * p.log()).sum())) if total else float(n)
        out.append(TableStats(table, [f.name for f in members], n, int((counts > 0).sum()), total, effective))
    return out


def plan_tables(
    stats: list[TableStats], budget: int, dim: int, alpha: float = 0.3, rows_share: float = 0.5
) -> dict[str, Any]:
    """Rows and widths per table within `budget` bytes (tables and projections)."""
    check_dim("plan", dim)
    floats = budget // BYTES_PER_FLOAT
    projection = WIDTH_MULTIPLE * dim if dim != WIDTH_MULTIPLE else 0  # of a width-4 table
    least = len(stats) * (WIDTH_MULTIPLE + projection)
    if floats < least:
        raise ValueError(
            f"budget={budget} bytes is below the smallest configuration (one row of width {WIDTH_MULTIPLE} per table "
            f"and its projection to dim={dim}, {len(stats)} tables: {least * BYTES_PER_FLOAT} bytes); raise the budget "
            f"or lower the dim"
        )
    share = max(int(rows_share * floats), least)

    def rows_cost(cap: int) -> int:
        return sum(min(s.cardinality, cap) * WIDTH_MULTIPLE + projection for s in stats)

    lo, hi = 1, max(s.cardinality for s in stats)
    while lo < hi:  # the largest cap whose rows fit the share at width 4
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if rows_cost(mid) <= share else (lo, mid - 1)
    rows = {s.name: min(s.cardinality, lo) for s in stats}
    sizes = {s.name: max(s.effective, 1.0) for s in stats}
    widths = power_rule_widths(sizes, dim, alpha, floats, {}, rows)
    assert widths is not None  # width 4 everywhere fits: rows_cost(cap) <= floats
    per_table = []
    for s in stats:
        w = widths[s.name]
        table_bytes = (rows[s.name] * w + (w * dim if w != dim else 0)) * BYTES_PER_FLOAT
        decision = "full" if rows[s.name] == s.cardinality else "hashed"
        per_table.append({**s.to_dict(), "decision": decision, "rows": rows[s.name], "width": w, "bytes": table_bytes})
    return {
        "budget": budget,
        "planned_bytes": sum(t["bytes"] for t in per_table),
        "full_bytes": sum(s.cardinality for s in stats) * dim * BYTES_PER_FLOAT,
        "tables": per_table,
    }


def config_of(
    plan: dict[str, Any], data: str, split: list[float], dim: int, alpha: float, model: str
) -> dict[str, Any]:
    """The `recemb train --config` mapping of a plan."""
    widths = ";".join(f"{t['table']}={t['width']}" for t in plan["tables"])
    rows = ";".join(f"{t['table']}={t['rows']}" for t in plan["tables"] if t["decision"] == "hashed")
    table: dict[str, Any] = {
        "kind": "mixed_dim",
        "dim": dim,
        "alpha": alpha,
        "budget": plan["budget"],
        "widths": widths,
    }
    if rows:
        table["rows"] = rows
    return {"data": data, "split": list(split), "table": table, "model": {"name": model}}


def write_config(conf: dict[str, Any], path: str | Path, header: str) -> Path:
    """YAML (.yaml/.yml) or TOML (.toml), the formats `recemb train --config` reads."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(conf, sort_keys=False)
    elif path.suffix == ".toml":
        text = _toml(conf)
    else:
        raise ValueError(f"--out {str(path)!r} must end in .yaml, .yml or .toml (what recemb train --config reads)")
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lines + text)
    return path


def _toml(conf: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    top = [f"{k} = {value(v)}" for k, v in conf.items() if not isinstance(v, dict)]
    sections = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
        for k, v in conf.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"


# -- CLI --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="dataset spec, as for recemb train (its training part is counted)"
    )
    parser.add_argument("--budget", required=True, help="bytes for the embedding tables: 8MB, 8MiB, 500000, ...")
    parser.add_argument("--dim", type=int, default=16, help="the model's embedding width (default 16)")
    parser.add_argument("--alpha", type=float, default=0.3, help="temperature of the width power rule (default 0.3)")
    parser.add_argument(
        "--rows-share", type=float, default=0.5, help="budget share that rows at width 4 may take (default 0.5)"
    )
    parser.add_argument("--split", default="0.7,0.1,0.2", help="train,valid,test fractions (default 0.7,0.1,0.2)")
    parser.add_argument("--model", default="autoint", help="model of the config (default autoint)")
    parser.add_argument("--out", help="config file to write (.yaml or .toml); without it only the plan is printed")


def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = parse_bytes(args.budget)
    if not 0 < args.rows_share <= 1:
        raise ValueError(f"--rows-share must be in (0, 1], got {args.rows_share}")
    split = [float(x) for x in args.split.split(",")]
    data = load_dataset(args.data, tuple(split))
    plan = plan_tables(table_stats(data.train), budget, args.dim, args.alpha, args.rows_share)
    conf = config_of(plan, args.data, split, args.dim, args.alpha, args.model)
    out = {**plan, "config": conf}
    if args.out:
        header = (
            f"recemb plan --data {args.data} --budget {args.budget} --dim {args.dim}: {plan['planned_bytes']} of "
            f"{budget} bytes (full tables: {plan['full_bytes']}); train with recemb train --config {args.out}"
        )
        out["written"] = str(write_config(conf, args.out, header))
    return out
