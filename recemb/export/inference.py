"""The serving side of an export: compact blocks behind fbgemm's int-n-bit inference TBE.

A logical table exports as blocks. A block holds the rows of the raw ids [lo, hi) (the
rows of a DNIS frequency group; the whole table for the other kinds), `width` wide, as fp32
or int8 (row-wise, fp16 scale and bias: fbgemm's fused 8-bit rows); optionally an int32
`remap` from id − lo to its row, −1 for a pruned id, which fbgemm's index remapping applies
inside the lookup and which makes a pruned id read as zero; or a `salt` (a hashed table:
row = hash_to_buckets(id, salt, rows), in torch before the lookup). A block's vector goes
to the model's width by `columns` (the output columns it fills: a DNIS group's kept
dimensions), by a `projection` [D, width] (mixed_dim), or, with neither, into the first
`width` columns (zero padding: OptEmbed, and tables already `dim` wide).

Each (feature, block) pair, and for a sequence each (feature, block, position), is one
virtual feature of ONE fbgemm call: ids outside a block's range are dropped from its bags
(so sums over blocks give the table's vector), and sequences become max_len bags of 0 or 1
id, as in the training TBE store. Mean pooling divides by the bag's full length. Runs on the
CPU (fbgemm's host kernels). fbgemm's index remapping (which works on the CPU) applies the
remaps when each virtual feature reads its own block (every table read by one single-valued
or multi-hot feature, one block each: the usual CTR case); otherwise the same int32 arrays
are gathered in torch before the call, since fbgemm's `pruned_array_lookup` finds a remap by
feature index and would read the wrong one for a table several features share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.hashing import hash_to_buckets
from recemb.storage import MemoryReport, StoreLayout, StoreSettings
from recemb.tables.base import Embedded, TableEmbedding

DTYPES: dict[str, SparseType] = {"fp32": SparseType.FP32, "int8": SparseType.INT8}
SCALE_BIAS_BYTES = 4  # an int8 row's fp16 scale and bias


@dataclass
class Block:
    """Rows of raw ids [lo, hi) of one table (see the module docstring)."""

    lo: int
    hi: int
    weight: Tensor  # fp32 [rows, width], or uint8 [rows, width + 4] (int8 rows, scale and bias)
    dtype: str = "fp32"
    remap: Tensor | None = None  # int32 [hi - lo]
    columns: Tensor | None = None  # int64 [width]; None (and no projection): the first `width` columns
    projection: Tensor | None = None  # fp32 [D, width]
    salt: int | None = None

    @property
    def rows(self) -> int:
        return int(self.weight.shape[0])

    @property
    def width(self) -> int:
        return int(self.weight.shape[1]) - (SCALE_BIAS_BYTES if self.dtype == "int8" else 0)

    def nbytes(self) -> int:
        """Weights, remap and output map as stored."""
        total = self.weight.numel() * self.weight.element_size()
        for t in (self.remap, self.projection):
            total += 0 if t is None else t.numel() * t.element_size()
        return total + (0 if self.columns is None else self.columns.numel() * 4)  # int32 columns

    def to_state(self) -> dict:
        return {k: getattr(self, k) for k in ("lo", "hi", "weight", "dtype", "remap", "columns", "projection", "salt")}


def quantize_int8(weight: Tensor) -> Tensor:
    """fp32 [R, W] -> fbgemm's fused 8-bit rows [R, W + 4] (uint8 values, fp16 scale and bias)."""
    return torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(weight.float().contiguous(), 8)


class ExportedEmbedding(TableEmbedding):
    """A table module over exported blocks (no store, no training): forward(kjt) -> Embedded."""

    def __init__(self, schema: Schema, dim: int, tables: dict[str, list[Block]], hashed: set[str]) -> None:
        super().__init__(schema, StoreSettings("reference"))
        self._dim, self.tables, self.hashed = dim, tables, hashed
        missing = sorted(set(schema.tables()) - set(tables))
        if missing:
            raise ValueError(f"the export lacks tables {missing} of its schema")
        specs, remaps, self._virtual = [], [], []  # virtual: (feature index, block, slot)
        self._block_index: dict[tuple[str, int], int] = {}
        for name, blocks in tables.items():
            for b, block in enumerate(blocks):
                self._block_index[(name, b)] = len(specs)
                specs.append((f"{name}#{b}", block.rows, block.width, DTYPES[block.dtype], EmbeddingLocation.HOST))
                remaps.append(block.remap)
        for i, f in enumerate(schema.sparse):
            for b in range(len(tables[f.table_name])):
                for slot in range(f.max_len if f.is_sequence else 1):
                    self._virtual.append((i, b, slot))
        self.tbe = None
        table_map = [self._block_index[(schema.sparse[i].table_name, b)] for i, b, _ in self._virtual]
        # fbgemm's array remapping finds a remap by feature index, not by table: right only
        # when virtual feature t reads table t; otherwise the remap is gathered in torch
        self.fbgemm_remap = table_map == list(range(len(specs))) and any(r is not None for r in remaps)
        if specs:
            self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                specs,
                feature_table_map=table_map,
                index_remapping=remaps if self.fbgemm_remap else None,
                pooling_mode=PoolingMode.SUM,
                device="cpu",
                bounds_check_mode=BoundsCheckMode.NONE,  # ids are checked (or hashed) before the call
                output_dtype=SparseType.FP32,
            )
            self.tbe.fill_random_weights()  # allocates; overwritten below
            for (name, b), j in self._block_index.items():
                self._load_block(j, tables[name][b])
        self._plan_outputs()

    def _load_block(self, j: int, block: Block) -> None:
        weights, scale_bias = self.tbe.split_embedding_weights()[j]
        if block.dtype == "fp32":
            weights.copy_(block.weight.float().contiguous().view(torch.uint8).view(block.rows, -1))
        else:
            weights.copy_(block.weight[:, : block.width])
            scale_bias.copy_(block.weight[:, block.width :])

    def _plan_outputs(self) -> None:
        """Where each virtual feature's columns go: an output slot (pooled feature, or a
        sequence position) and columns of it, or through a projection."""
        slot_of, n = {}, 0
        for i, f in enumerate(self.schema.sparse):
            for s in range(f.max_len if f.is_sequence else 1):
                slot_of[(i, s)], n = n, n + 1
        self._slots = n
        src, dst, self._projected, start = [], [], [], 0
        for i, b, s in self._virtual:
            block = self.tables[self.schema.sparse[i].table_name][b]
            target = slot_of[(i, s)] * self._dim
            if block.projection is None:
                columns = torch.arange(block.width) if block.columns is None else block.columns.long()
                src.append(torch.arange(start, start + block.width))
                dst.append(target + columns)
            else:
                self._projected.append((start, block.width, target, block.projection))
            start += block.width
        self.register_buffer("_src", torch.cat(src) if src else torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_dst", torch.cat(dst) if dst else torch.zeros(0, dtype=torch.long), persistent=False)

    @property
    def dim(self) -> int:
        return self._dim

    def layout(self) -> StoreLayout:
        raise NotImplementedError("an exported table has no store layout; it reads its blocks")

    def fused_parameters(self) -> list:
        return []

    def memory(self) -> MemoryReport:
        stored = sum(b.nbytes() for blocks in self.tables.values() for b in blocks)
        return MemoryReport(0, stored, 0)

    # -- lookup ----------------------------------------------------------------------------------
    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        batch = kjt.stride()
        self._check_ranges(kjt)
        indices, lengths = [], []
        per_key = kjt.length_per_key()
        values, starts = kjt.values().long(), [0, *torch.tensor(per_key).cumsum(0).tolist()]
        key_lengths = kjt.lengths().view(len(self._keys), batch).long()
        cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        for i, b, s in self._virtual:
            f = self.schema.sparse[i]
            if (i, b) not in cache:
                cache[(i, b)] = self._block_ids(
                    f.table_name,
                    b,
                    values[starts[i] : starts[i + 1]],
                    key_lengths[i],
                    f.max_len if f.is_sequence else 0,
                )
            ids, lens = cache[(i, b)]
            if f.is_sequence:  # ids [B, L] with -1 where no item: position s as a bag of 0 or 1 id
                column = ids[:, s]
                present = column >= 0
                indices.append(column[present])
                lengths.append(present.long())
            else:
                indices.append(ids)
                lengths.append(lens)
        flat = torch.zeros(batch, self._slots * self._dim)
        if self.tbe is not None and indices:
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(torch.cat(lengths))
            out = self.tbe(torch.cat(indices).int(), offsets.int())  # [B, sum of widths]
            flat.index_add_(1, self._dst, out.index_select(1, self._src))
            for start, width, target, projection in self._projected:
                flat[:, target : target + self._dim] += out[:, start : start + width] @ projection.t()
        return self._assemble(flat.view(batch, self._slots, self._dim), key_lengths)

    def _block_ids(self, table: str, b: int, ids: Tensor, lengths: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
        """A feature's ids in block b: pooled, (ids [n'], lengths [B]); sequence, (ids [B, L]
        with -1 where there is no item or it is not in the block, lengths unused)."""
        block, keep = self.tables[table][b], None
        if block.salt is not None:
            ids = hash_to_buckets(ids, block.salt, block.rows)
        else:
            if block.lo != 0 or block.hi != self.schema.tables()[table][0].cardinality:
                keep = (ids >= block.lo) & (ids < block.hi)
                ids = torch.where(keep, ids - block.lo, 0)
            if block.remap is not None and not self.fbgemm_remap:
                ids = block.remap[ids].long()  # -1: pruned
                keep = ids >= 0 if keep is None else keep & (ids >= 0)
        if max_len:
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
            marked = ids if keep is None else torch.where(keep, ids, -1)
            return torch.ops.fbgemm.jagged_1d_to_dense(marked, offsets, max_len, -1), lengths
        if keep is None:
            return ids, lengths
        sample = torch.repeat_interleave(torch.arange(lengths.numel()), lengths, output_size=ids.numel())
        kept = torch.zeros(lengths.numel(), dtype=torch.long).index_add_(0, sample, keep.long())
        return ids[keep], kept

    def _check_ranges(self, kjt: KeyedJaggedTensor) -> None:
        values, start = kjt.values(), 0
        for spec, n in zip(self.schema.sparse, kjt.length_per_key()):
            if n and spec.table_name not in self.hashed:
                lo, hi = (int(v) for v in torch.aminmax(values[start : start + n]))
                if lo < 0 or hi >= spec.cardinality:
                    raise IndexError(
                        f"feature {spec.name!r}: id {lo if lo < 0 else hi} is outside [0, {spec.cardinality}) "
                        f"(its cardinality); map unseen ids to an OOV id"
                    )
            start += n

    def _assemble(self, slots: Tensor, key_lengths: Tensor) -> Embedded:
        batch = slots.shape[0]
        pooled, sequences, n = [], {}, 0
        for i, f in enumerate(self.schema.sparse):
            if f.is_sequence:
                mask = torch.arange(f.max_len).unsqueeze(0) < key_lengths[i].unsqueeze(1)
                sequences[f.name] = (slots[:, n : n + f.max_len], mask)
                n += f.max_len
            else:
                vector = slots[:, n]
                if f.pooling == "mean":
                    vector = vector / key_lengths[i].clamp(min=1).unsqueeze(1).to(vector.dtype)
                pooled.append(vector)
                n += 1
        stacked = torch.stack(pooled, dim=1) if pooled else slots.new_zeros(batch, 0, self._dim)
        return Embedded(stacked, sequences)
