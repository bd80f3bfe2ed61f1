"""DARE: search with attention embeddings, aggregate representation embeddings; with an
ordinary table it is its single-table baseline; attention width 8, representation 16 trains."""

import pytest
import torch
from torch.testing import assert_close

from recemb.data.synthetic import SyntheticConfig, generate
from recemb.features import FeatureSpec, Schema
from recemb.metrics import auc
from recemb.models import DARE, DAREConfig
from recemb.models.dare import search
from recemb.storage import StoreSettings
from recemb.tables import Decoupled, Full, build_embedding
from recemb.train import TrainConfig, Trainer, predict

SCHEMA = Schema(
    (FeatureSpec("item", 30), FeatureSpec("hist_item", 30, "sequence", max_len=5, table="item")),
)
TWO_TABLES = Decoupled(attention="full:dim=8", representation="full:dim=16")


def model_of(table, backend="reference", **settings):
    torch.manual_seed(0)
    return DARE(build_embedding(SCHEMA, table, StoreSettings(backend)), DAREConfig(**settings))


def test_search_ranks_by_attention_scores():
    target = torch.tensor([[1.0, 0.0]])
    history = torch.tensor([[[0.1, 0.0], [3.0, 0.0], [2.0, 9.0], [5.0, 0.0]]])
    positions, present, scores = search(target, history, torch.tensor([[True, True, True, False]]), 2)
    assert sorted(positions[0].tolist()) == [1, 2] and present.all()
    assert sorted(scores[0].tolist()) == [2.0, 3.0]


def test_attention_view_searches_and_representation_view_is_aggregated(make_kjt):
    model = model_of(TWO_TABLES, k=2)
    kjt = make_kjt({"item": [[1], [2]], "hist_item": [[3, 4, 5], []]})
    weights = model.embedding.store.table_weights()
    att, rep = weights["att/item"], weights["rep/item"]
    head_inputs = {}
    model.head.register_forward_hook(lambda m, args, out: head_inputs.setdefault("x", args[0]))
    model(kjt, torch.zeros(2, 0))
    x = head_inputs["x"]  # [B, others (item r, 16) | h (16) | r(target) * h (16)]
    scores = att[[3, 4, 5]] @ att[1]
    best = scores.topk(2).indices
    h = (torch.softmax(scores[best], 0).unsqueeze(1) * rep[[3, 4, 5]][best]).sum(0)
    assert_close(x[0, :16], rep[1])
    assert_close(x[0, 16:32], h)
    assert_close(x[0, 32:], rep[1] * h)
    assert not x[1, 16:].any()  # an empty history: h = 0, no NaN


def test_an_ordinary_table_is_the_single_table_baseline(make_kjt):
    model = model_of(Full(dim=16))
    assert model.attention_dim == model.dim == 16
    emb = model.embedding(make_kjt({"item": [[1]], "hist_item": [[2, 3]]}))
    assert emb.view("attention") is emb


def test_each_table_gets_its_own_gradients(make_kjt):
    model = model_of(TWO_TABLES, k=2)
    kjt = make_kjt({"item": [[1], [2]], "hist_item": [[3, 4, 5], [6]]})
    before = model.embedding.store.table_weights()
    kept = {3 + int(i) for i in (before["att/item"][[3, 4, 5]] @ before["att/item"][1]).topk(2).indices}
    dropped = ({3, 4, 5} - kept).pop()
    model(kjt, torch.zeros(2, 0)).sum().backward()
    after = model.embedding.store.table_weights()

    def moved(name):
        return set((after[name] != before[name]).any(1).nonzero().flatten().tolist())

    # attention rows learn through the softmax over the kept items only: sample 1's single
    # item has weight 1 whatever its score, so neither it nor its target moves
    assert moved("att/item") == {1} | kept
    # representation rows: the targets, the kept items, never the item the search dropped
    assert moved("rep/item") == {1, 2, 6} | kept and dropped not in moved("rep/item")


def test_dare_with_attention_width_8_and_representation_width_16_trains():
    cfg = SyntheticConfig(
        rows=6000, cardinalities=(40, 400), n_dense=0, multi_hot=0, sequence_max_len=8, signal_std=2.5, seed=1
    )
    data = generate(cfg)
    train, valid = data.split([0.8, 0.2])
    torch.manual_seed(0)
    embedding = build_embedding(data.schema, TWO_TABLES, StoreSettings("tbe"))
    assert (embedding.attention_dim, embedding.dim) == (8, 16)
    model = DARE(embedding, DAREConfig(k=4, hidden=(32,)))
    before = embedding.store.table_weights()
    history = Trainer(model, TrainConfig(epochs=3, batch_size=256, lr=3e-3, patience=3)).fit(train, valid)
    losses = [e["train_loss"] for e in history.epochs]
    assert losses[-1] < losses[0]
    assert auc(valid.labels.numpy(), predict(model, valid)) > 0.6
    after = embedding.store.table_weights()
    for name in ("att/C2", "rep/C1", "rep/C2"):  # the attention view of C1 is never read
        assert not torch.equal(before[name], after[name]), name


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"DAREConfig.hidden widths must be >= 1"):
        DAREConfig(hidden=(16, 0))
    with pytest.raises(ValueError, match=r"DAREConfig.k must be >= 1, got 0"):
        DAREConfig(k=0)
