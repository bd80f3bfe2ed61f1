"""Decoupled attention and representation embeddings (DARE, Feng et al., ICLR 2025): two
tables per feature, one that target attention scores with and one whose vectors are
aggregated and fed to the model.

Any two kinds can be paired (a small hashed attention table and a full representation
table, say). Both kinds' physical tables sit in ONE store, so a batch is still one fused
lookup: each inner kind is built with `deferred_store()` (layout only), its table names and
store keys are prefixed (`att/`, `rep/`), and one store serves the merged layout. A forward
runs each inner kind's id transform (`store_input`), concatenates the two KJTs, looks up
once, splits the output columns, and lets each inner kind `combine_output` its part.

The output is the representation view, carrying the attention view in
`Embedded.attention`; `forward(kjt, view="attention")` returns the attention view. Models
that need one view read the representation, so every model accepts this kind.

Deviation: the paper's attention table is an ordinary full table of a smaller width; here
it may be any kind. Raw ids are checked here for inner kinds whose `oov` is "error" (a kind
may validate them in an overridden `embed`, which is not called here: QR does), and the
store checks every row id once more (`check_ids=True`), cheap insurance for the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.config import to_mapping
from recemb.features import Schema
from recemb.storage import StoreLayout, StoreSettings
from recemb.tables.base import Embedded, TableEmbedding, deferred_store

PREFIXES: dict[str, str] = {"attention": "att/", "representation": "rep/"}


def parse_inner(owner: str, value: Any) -> Any:
    """A table config from `kind:key=value;key=value`, a {kind: ..., ...} mapping or a config."""
    from recemb.tables import _MODULES, kind_config, table_from_mapping

    if isinstance(value, str):
        kind, _, settings = value.strip().partition(":")
        items = dict(s.split("=", 1) if "=" in s else (s, "") for s in filter(None, settings.split(";")))
        bad = [k for k, v in items.items() if not v]
        if bad:
            raise ValueError(f"{owner}: settings of an inner kind look like kind:key=value;key=value, got {value!r}")
        cfg = table_from_mapping({"kind": kind.strip(), **{k.strip(): v.strip() for k, v in items.items()}})
    elif isinstance(value, dict):
        cfg = table_from_mapping(value)
    elif getattr(value, "kind", None) in _MODULES:
        cfg = value
    else:
        raise TypeError(f"{owner} must be a table kind such as 'hashed:dim=8;buckets=4096', got {value!r}")
    if cfg.kind == Decoupled.kind:
        raise ValueError(f"{owner} cannot itself be decoupled; give an ordinary kind")
    kind_config(cfg.kind)
    return cfg


def spec_string(cfg: Any) -> str:
    """The canonical `kind[:key=value;...]` of a config: only settings that differ from the
    kind's defaults, so equal configs give equal strings."""
    defaults = to_mapping(type(cfg)())
    changed = {k: v for k, v in to_mapping(cfg).items() if v != defaults.get(k)}
    for k, v in changed.items():
        if isinstance(v, list) and len(v) > 1:
            raise ValueError(
                f"setting {k}={v} of kind {cfg.kind!r} holds several values, which a decoupled kind's "
                f"'kind:key=value;...' string cannot carry"
            )
    text = ";".join(f"{k}={v[0] if isinstance(v, list) else v}" for k, v in changed.items())
    return f"{cfg.kind}:{text}" if text else cfg.kind


@dataclass(frozen=True)
class Decoupled:
    """Settings for DecoupledEmbedding: two table kinds, one per view.

    attention / representation: `kind[:key=value;key=value]` (settings separated by ';'
    inside one setting of the outer `decoupled:...` string), or a {kind, ...} mapping in a
    config file; e.g. `decoupled:attention=full:dim=8,representation=full:dim=16`. The
    defaults are two separate full tables of width 16. Stored in canonical form.
    """

    kind: ClassVar[str] = "decoupled"
    attention: Any = "full"
    representation: Any = "full"

    def __post_init__(self) -> None:
        for name in PREFIXES:
            cfg = parse_inner(f"Decoupled.{name}", getattr(self, name))
            object.__setattr__(self, name, spec_string(cfg))

    @property
    def attention_config(self) -> Any:
        return parse_inner("Decoupled.attention", self.attention)

    @property
    def representation_config(self) -> Any:
        return parse_inner("Decoupled.representation", self.representation)

    @property
    def dim(self) -> int:
        """The representation width (what models read)."""
        return self.representation_config.dim

    @property
    def attention_dim(self) -> int:
        return self.attention_config.dim


class DecoupledEmbedding(TableEmbedding):
    """An attention kind and a representation kind over one store (keys `att/...`, `rep/...`)."""

    def __init__(self, schema: Schema, cfg: Decoupled, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        from recemb.tables import _MODULES

        self.cfg = cfg
        inner = {}
        with deferred_store():
            for view, inner_cfg in (("attention", cfg.attention_config), ("representation", cfg.representation_config)):
                module = _MODULES[inner_cfg.kind](schema, inner_cfg, settings)
                if type(module).store_input is TableEmbedding.store_input:
                    raise ValueError(
                        f"Decoupled.{view}: kind {inner_cfg.kind!r} does not split into store_input / combine_output, "
                        f"so it cannot share a store; pick another kind"
                    )
                inner[view] = module
        self.parts = nn.ModuleDict(inner)
        configs = (cfg.attention_config, cfg.representation_config)
        self._check_raw_ids = any(getattr(c, "oov", None) == "error" for c in configs)
        self._inner_layouts = {view: m.store.layout for view, m in inner.items()}
        self._widths = [self._inner_layouts[v].width for v in PREFIXES]
        self._keys_merged = [PREFIXES[v] + k for v in PREFIXES for k in self._inner_layouts[v].keys]
        self._build_store()

    @property
    def dim(self) -> int:
        return self.parts["representation"].dim

    @property
    def attention_dim(self) -> int:
        return self.parts["attention"].dim

    def layout(self) -> StoreLayout:
        tables, lookups = [], []
        for view, prefix in PREFIXES.items():
            inner = self._inner_layouts[view]
            tables += [dataclasses.replace(t, name=prefix + t.name) for t in inner.tables]
            lookups += [
                dataclasses.replace(lk, key=prefix + lk.key, table=prefix + lk.table) for lk in inner.lookups
            ]
        return StoreLayout(tuple(tables), tuple(lookups))

    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Both inner kinds' store KJTs end to end, keys prefixed."""
        if self._check_raw_ids:
            self.check_id_range(kjt)
        parts = [self.parts[view].store_input(kjt) for view in PREFIXES]
        return KeyedJaggedTensor(
            keys=self._keys_merged,
            values=torch.cat([p.values().long() for p in parts]),
            lengths=torch.cat([p.lengths().long() for p in parts]),
            stride=kjt.stride(),
            length_per_key=[n for p in parts for n in p.length_per_key()],
        )

    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        att_out, rep_out = out.split(self._widths, dim=1)
        att = self.parts["attention"].combine_output(att_out, kjt)
        rep = self.parts["representation"].combine_output(rep_out, kjt)
        return Embedded(rep.pooled, rep.sequences, attention=att)

    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        # check_ids=True: see the module docstring
        return self.combine_output(self.store(self.store_input(kjt), check_ids=True), kjt)
