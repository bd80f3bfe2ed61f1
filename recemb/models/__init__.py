"""CTR models: the registry and `build_model`. Every model takes any table kind."""

from __future__ import annotations

from typing import Any

from recemb.config import closest, from_mapping
from recemb.models.autoint import AutoInt, AutoIntConfig, AutoIntPlusConfig
from recemb.models.base import CTRModel
from recemb.models.dare import DARE, DAREConfig
from recemb.models.dcnv2 import DCNv2, DCNv2Config
from recemb.models.deepfm import DeepFM, DeepFMConfig
from recemb.models.din import DIN, DINConfig
from recemb.models.dlrm import DLRM, DLRMConfig
from recemb.models.twin import TWIN, TWINConfig
from recemb.models.wdl import WDL, WDLConfig
from recemb.tables.base import TableEmbedding

# model name -> (config dataclass, model class)
MODELS: dict[str, tuple[type, type[CTRModel]]] = {
    "autoint": (AutoIntConfig, AutoInt),
    "autoint_plus": (AutoIntPlusConfig, AutoInt),
    "dcnv2": (DCNv2Config, DCNv2),
    "deepfm": (DeepFMConfig, DeepFM),
    "dlrm": (DLRMConfig, DLRM),
    "wdl": (WDLConfig, WDL),
    "din": (DINConfig, DIN),
    "twin": (TWINConfig, TWIN),
    "dare": (DAREConfig, DARE),
}


def model_config(name: str, settings: dict[str, Any] | None = None) -> Any:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}{closest(name, MODELS)}; known models: {sorted(MODELS)}")
    return from_mapping(MODELS[name][0], settings or {})


def build_model(embedding: TableEmbedding, cfg: Any) -> CTRModel:
    """The model named by `cfg.name`, around `embedding`."""
    name = getattr(cfg, "name", None)
    if name not in MODELS:
        raise TypeError(f"cfg must be a model config ({sorted(MODELS)}), got {type(cfg).__name__}")
    return MODELS[name][1](embedding, cfg)


__all__ = [
    "DARE",
    "DIN",
    "DLRM",
    "TWIN",
    "MODELS",
    "WDL",
    "AutoInt",
    "AutoIntConfig",
    "AutoIntPlusConfig",
    "CTRModel",
    "DCNv2",
    "DAREConfig",
    "DCNv2Config",
    "DINConfig",
    "DLRMConfig",
    "DeepFM",
    "DeepFMConfig",
    "TWINConfig",
    "WDLConfig",
    "build_model",
    "model_config",
]
