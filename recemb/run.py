"""One training run from a nested config: data -> table -> model -> fit -> test metrics.

The config is plain data (what a YAML/TOML file holds, or the CLI builds):

    data: "synthetic" | "synthetic:rows=50000,seed=1" | "NAME:PATH[?option=value,...]"
    split: [0.7, 0.1, 0.2]
    table: {kind: full, dim: 16, ...}          # any registered kind's settings
    model: {name: autoint, layers: 3, ...}     # any registered model's settings
    train: {epochs: 1, batch_size: 1024, ...}  # TrainConfig
    store: {backend: tbe, optimizer: {name: rowwise_adagrad, lr: 0.05}}
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recemb import native
from recemb.config import from_mapping, to_mapping
from recemb.data import DataSplits, load_dataset
from recemb.models import build_model, model_config
from recemb.storage import MemoryReport, StoreSettings
from recemb.tables import build_embedding, table_from_mapping
from recemb.train import History, TrainConfig, Trainer, evaluate, predict, seed_everything

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "data": "synthetic",
    "split": [0.7, 0.1, 0.2],
    "table": {"kind": "full", "dim": 16},
    "model": {"name": "autoint"},
    "train": {},
    "store": {},
}
SECTIONS = tuple(DEFAULTS)


@dataclass
class RunResult:
    metrics: dict[str, Any]  # the JSON line of `recemb train`
    test_probs: np.ndarray
    test_labels: np.ndarray


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, section by section; a new table kind or model name
    replaces that section instead of mixing two kinds' settings."""
    unknown = sorted(set(override) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; sections: {list(SECTIONS)}")
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            switches = (key == "table" and value.get("kind", out[key].get("kind")) != out[key].get("kind")) or (
                key == "model" and value.get("name", out[key].get("name")) != out[key].get("name")
            )
            out[key] = dict(value) if switches else _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def environment() -> dict[str, str]:
    import fbgemm_gpu
    import torchrec

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
        "torchrec": getattr(torchrec, "__version__", "?"),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def run_training(
    conf: dict[str, Any], out_dir: str | Path | None = None, resume: bool = False, data: DataSplits | None = None
) -> RunResult:
    """Train the configured model and report test metrics (model chosen on validation)."""
    conf, train_cfg, settings, table_cfg, model_cfg = resolve_config(conf)

    from recemb.pruning.procedures import PROCEDURES, StageContext, save_trained

    data = data or load_dataset(conf["data"], tuple(conf["split"]))
    native.load_all()  # compile before the clock starts: samples/s measures training alone
    procedure = PROCEDURES.get(table_cfg.kind)  # kinds trained in stages (optembed, dnis)
    stages, arch = {}, None
    if procedure is None:
        seed_everything(train_cfg.seed)
        embedding = build_embedding(data.train.schema, table_cfg, settings)
        model = build_model(embedding, model_cfg)
        trainer = Trainer(model, train_cfg, out_dir)
        if resume:
            trainer.try_resume()
        history = trainer.fit(data.train, data.valid)
    else:
        if resume:
            raise ValueError(
                f"resume is not supported for table kind {table_cfg.kind!r}, whose training runs in stages; "
                f"start the run again"
            )
        staged = procedure(StageContext(data, table_cfg, model_cfg, train_cfg, settings))
        model, history, stages, arch = staged.model, staged.history, staged.stages, staged.arch
        embedding = model.embedding

    test = evaluate(model, data.test, train_cfg.eval_batch_size, data.groups.get("test"))
    metrics = run_metrics(test, embedding.memory(), history, data, table_cfg, model_cfg)
    if stages:
        metrics["stages"] = stages  # each stage's test AUC, log loss and bytes
    if out_dir is not None:
        write_run_record(Path(out_dir), conf, table_cfg, model_cfg, train_cfg, settings, data, history, metrics)
        save_trained(Path(out_dir), model, arch)  # model.pt, for kinds that `recemb export` reads
    probs = predict(model, data.test, train_cfg.eval_batch_size)
    return RunResult(metrics, probs, data.test.labels.numpy())


def resolve_config(conf: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig, StoreSettings, Any, Any]:
    """The config on top of DEFAULTS, and its train, store, table and model settings."""
    conf = merge_config(DEFAULTS, conf)
    train_cfg = from_mapping(TrainConfig, conf["train"])
    store = dict(conf["store"])
    store.setdefault("seed", train_cfg.seed)
    settings = from_mapping(StoreSettings, store)
    table_cfg = table_from_mapping(conf["table"])
    model_settings = dict(conf["model"])
    model_cfg = model_config(model_settings.pop("name"), model_settings)
    return conf, train_cfg, settings, table_cfg, model_cfg


def run_metrics(
    test: dict[str, float], memory: MemoryReport, history: History, data: DataSplits, table_cfg: Any, model_cfg: Any
) -> dict[str, Any]:
    """The JSON line of `recemb train`, from the test scores and the run."""
    return {
        "auc": test["auc"],
        **({"gauc": test["gauc"]} if "gauc" in test else {}),  # data with user groups
        "logloss": test["logloss"],
        "auc_se": test["auc_se"],
        "table_params": memory.params,
        "table_bytes": memory.bytes,
        "table_optimizer_bytes": memory.optimizer_bytes,
        "samples_per_s": history.samples_per_s,
        "best_epoch": history.best_epoch,
        "valid_auc": history.epochs[history.best_epoch - 1].get("valid_auc") if history.best_epoch > 0 else None,
        "test_rows": len(data.test),
        "skipped_lines": data.report.get("skipped_lines", 0),
        "kind": table_cfg.kind,
        "model": model_cfg.name,
    }


def write_run_record(
    out: Path, conf, table_cfg, model_cfg, train_cfg, settings, data, history, metrics, extra: dict | None = None
) -> None:
    """run.json (plus the fitted vocabularies and dense statistics); `extra` adds sections."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "config": conf,
        "resolved": {
            "table": {"kind": table_cfg.kind, **to_mapping(table_cfg)},
            "model": {"name": model_cfg.name, **to_mapping(model_cfg)},
            "train": to_mapping(train_cfg),
            "store": to_mapping(settings),
        },
        "data": {"spec": conf["data"], **data.report},
        "schema": data.train.schema.to_dict(),
        "history": history.epochs,
        "metrics": metrics,
        "environment": environment(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    if data.vocabularies:
        (out / "vocab.json").write_text(json.dumps(data.vocabularies))
    if data.dense_stats:
        (out / "dense_stats.json").write_text(json.dumps(data.dense_stats))
