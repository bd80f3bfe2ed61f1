"""Export a trained pruned, mixed-dimension or searched model (optembed, mixed_dim, dnis) to a
compact file for serving, and load it back.

The file (torch.save of a dict, format `recemb-export/1`) holds the schema, the model's name
and settings, its dense weights, and per logical table the blocks of recemb.export.inference:
surviving rows only, widths as trained or searched, an int32 id remap where rows were
pruned (pruned ids read as zero), the output map to the model's width; as fp32, or as int8
rows for fbgemm's int-n-bit inference TBE (`int8=True`). `load_export` rebuilds the model
around an ExportedEmbedding; its predictions equal the trained model's within float
tolerance (fp32) or within INT8_TOLERANCE (int8; tested).

    recemb export --run DIR --out FILE [--int8] [--check]

reads DIR/run.json and DIR/model.pt (written by `recemb train --out DIR` for these kinds,
sharded runs included).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from recemb.config import from_mapping, to_mapping
from recemb.export.inference import Block, ExportedEmbedding, quantize_int8
from recemb.features import Schema
from recemb.models import build_model, model_config
from recemb.models.base import CTRModel
from recemb.pruning.procedures import MODEL_FILE
from recemb.storage import StoreSettings
from recemb.tables import table_from_mapping

FORMAT = "recemb-export/1"
EXPORTABLE: tuple[str, ...] = ("optembed", "mixed_dim", "dnis")
# int8 rows (row-wise scale and bias) move a click probability by at most this much: the
# tests (tests/test_export.py) see <= 1e-4, Criteo runs at 5x (recemb export --check) <= 5e-4;
# fp32 exports agree with the trained model to float rounding
INT8_TOLERANCE = 0.005
FP32_TOLERANCE = 1e-5


def _blocks(model: CTRModel, int8: bool) -> tuple[dict[str, list[Block]], set[str]]:
    embedding = model.embedding
    if not hasattr(embedding, "export_tables"):
        kind = getattr(getattr(embedding, "cfg", None), "kind", type(embedding).__name__)
        raise ValueError(
            f"table kind {kind!r} has no compact export: export needs a pruned, mixed-dimension or searched "
            f"table (one of {list(EXPORTABLE)})"
        )
    tables, hashed = {}, set()
    with torch.no_grad():
        for name, blocks in embedding.export_tables().items():
            out = []
            for b in blocks:
                weight = b["weight"].detach().float().contiguous()
                if b.get("salt") is not None:
                    hashed.add(name)
                out.append(
                    Block(
                        lo=int(b["lo"]),
                        hi=int(b["hi"]),
                        weight=quantize_int8(weight) if int8 else weight,
                        dtype="int8" if int8 else "fp32",
                        remap=b.get("remap"),
                        columns=None if b.get("columns") is None else b["columns"].long(),
                        projection=None if b.get("projection") is None else b["projection"].detach().float(),
                        salt=b.get("salt"),
                    )
                )
            tables[name] = out
    return tables, hashed


def export_model(model: CTRModel, path: str | Path | None = None, int8: bool = False) -> dict[str, Any]:
    """The export of `model` (whose embedding is an exportable kind) as a dict, written to
    `path` when given; returns it with its byte counts under "bytes"."""
    model_cfg = model.cfg
    tables, hashed = _blocks(model, int8)
    embedding = model.embedding
    dense = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    table_bytes = sum(b.nbytes() for blocks in tables.values() for b in blocks)
    dense_bytes = sum(v.numel() * v.element_size() for v in dense.values())
    remap_bytes = sum(b.remap.numel() * 4 for blocks in tables.values() for b in blocks if b.remap is not None)
    record = {
        "format": FORMAT,
        "dtype": "int8" if int8 else "fp32",
        "schema": embedding.schema.to_dict(),
        "dim": embedding.dim,
        "kind": embedding.cfg.kind,
        "model": {"name": model_cfg.name, **to_mapping(model_cfg)},
        "tables": {name: [b.to_state() for b in blocks] for name, blocks in tables.items()},
        "hashed": sorted(hashed),
        "dense": dense,
        "bytes": {
            "tables": table_bytes,  # weights, remaps and output maps
            "remaps": remap_bytes,
            "dense": dense_bytes,
            "total": table_bytes + dense_bytes,
        },
    }
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(record, tmp)
        tmp.replace(path)
        record["bytes"]["file"] = path.stat().st_size
    return record


def load_export(source: str | Path | dict) -> CTRModel:
    """The inference model of an export file (or of export_model's dict), in eval mode."""
    record = source if isinstance(source, dict) else torch.load(source, weights_only=False)
    if record.get("format") != FORMAT:
        raise ValueError(
            f"{source if not isinstance(source, dict) else 'the record'} is not a recemb export ({FORMAT})"
        )
    schema = Schema.from_dict(record["schema"])
    tables = {name: [Block(**b) for b in blocks] for name, blocks in record["tables"].items()}
    embedding = ExportedEmbedding(schema, record["dim"], tables, set(record.get("hashed", ())))
    settings = dict(record["model"])
    model = build_model(embedding, model_config(settings.pop("name"), settings))
    loaded = model.load_state_dict(record["dense"], strict=False)
    wrong = [k for k in loaded.missing_keys if not k.startswith("embedding.")] + list(loaded.unexpected_keys)
    if wrong:
        raise ValueError(f"the export's dense weights do not fit model {record['model']['name']!r}: {wrong}")
    return model.eval()


# -- runs ---------------------------------------------------------------------------------------
def load_trained(run_dir: str | Path) -> tuple[CTRModel, dict]:
    """The trained model of a run directory (run.json and model.pt), on the reference store
    (stores are tested equal), and its run record."""
    run_dir = Path(run_dir)
    record_path = run_dir / "run.json"
    if not record_path.exists():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a run directory: it has no run.json (write one with recemb train --out DIR)"
        )
    record = json.loads(record_path.read_text())
    table = dict(record["resolved"]["table"])
    kind = table.get("kind")
    if kind not in EXPORTABLE:
        raise ValueError(
            f"run {str(run_dir)!r} trained table kind {kind!r}, which has no pruned, mixed or searched table to "
            f"export; export reads runs of {list(EXPORTABLE)}"
        )
    model_path = run_dir / MODEL_FILE
    if not model_path.exists():
        raise FileNotFoundError(
            f"run {str(run_dir)!r} has no {MODEL_FILE} (the trained weights); it ended before saving them"
        )
    saved = torch.load(model_path, weights_only=False)
    table_cfg = table_from_mapping(table)
    model_settings = dict(record["resolved"]["model"])
    model_cfg = model_config(model_settings.pop("name"), model_settings)
    store = dict(record["resolved"]["store"])
    settings = from_mapping(StoreSettings, {**store, "backend": "reference", "device": "cpu"})
    schema = Schema.from_dict(record["schema"])
    embedding = _trained_embedding(schema, table_cfg, settings, saved.get("arch"))
    model = build_model(embedding, model_cfg)
    loaded = model.load_state_dict(saved["dense"], strict=False)
    wrong = [k for k in loaded.missing_keys if ".store." not in k] + list(loaded.unexpected_keys)
    if wrong:
        raise ValueError(f"{str(model_path)!r} does not fit the run's model: {wrong}")
    embedding.store.load_table_weights(saved["store"]["weights"])  # serving needs no optimizer state
    return model.eval(), record


def _trained_embedding(schema: Schema, table_cfg: Any, settings: StoreSettings, arch: dict | None):
    from recemb.tables import build_embedding
    from recemb.tables.optembed import OptEmbedArch, OptEmbedEmbedding

    if table_cfg.kind == "optembed":
        if not arch or "optembed" not in arch:
            raise ValueError("the optembed run saved no searched architecture (kept rows and widths) to export")
        return OptEmbedEmbedding(schema, table_cfg, settings, OptEmbedArch.from_state(arch["optembed"]))
    return build_embedding(schema, table_cfg, settings)


def export_run(run_dir: str | Path, out: str | Path, int8: bool = False, check: bool = False) -> dict[str, Any]:
    """Export a run's trained model to `out`; with `check`, also the largest difference of
    click probabilities between the export and the trained model on the run's test rows."""
    model, record = load_trained(run_dir)
    exported = export_model(model, out, int8)
    report: dict[str, Any] = {"out": str(out), "dtype": exported["dtype"], "kind": exported["kind"]}
    report.update({f"{k}_bytes": v for k, v in exported["bytes"].items()})
    full = sum(m[0].cardinality for m in Schema.from_dict(record["schema"]).tables().values()) * exported["dim"] * 4
    report["full_table_bytes"] = full
    report["compression"] = full / exported["bytes"]["tables"] if exported["bytes"]["tables"] else math.inf
    if check:
        report.update(compare_on_run_data(model, load_export(out), run_dir, record))
    return report


def compare_on_run_data(trained: CTRModel, exported: CTRModel, run_dir: Path | str, record: dict) -> dict[str, float]:
    """Largest |Δp| and the AUCs of both models on the run's test rows (read as the run read them)."""
    from recemb import metrics
    from recemb.data import load_dataset
    from recemb.train import predict

    run_dir = Path(run_dir)
    vocab = run_dir / "vocab.json"
    stats = run_dir / "dense_stats.json"
    data = load_dataset(
        record["config"]["data"],
        tuple(record["config"]["split"]),
        vocabularies=json.loads(vocab.read_text()) if vocab.exists() else None,
        dense_stats=json.loads(stats.read_text()) if stats.exists() else None,
    )
    a, b = predict(trained, data.test), predict(exported, data.test)
    labels = data.test.labels.numpy()
    return {
        "max_abs_prob_diff": float(abs(a - b).max()) if len(a) else 0.0,
        "trained_auc": metrics.auc(labels, a),
        "export_auc": metrics.auc(labels, b),
    }


# -- CLI --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", required=True, help="run directory of `recemb train --out DIR` (optembed, mixed_dim or dnis)"
    )
    parser.add_argument("--out", required=True, help="export file to write")
    parser.add_argument(
        "--int8", action="store_true", help="int8 rows (fbgemm int-n-bit inference TBE) instead of fp32"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare the export with the trained model on the run's test rows"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    return export_run(args.run, args.out, int8=args.int8, check=args.check)
