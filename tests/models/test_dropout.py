"""BatchDropout: torch's dropout in one process; in a share of a sharded batch, the rows of
the mask one process draws for the whole batch."""

import pytest
import torch
from torch.testing import assert_close

from recemb.distributed.share import sharing
from recemb.models.base import MLP
from recemb.models.dropout import BatchDropout


def test_one_process_draws_torchs_dropout():
    x = torch.randn(64, 10)
    torch.manual_seed(3)
    want = torch.nn.functional.dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    assert_close(BatchDropout(0.3)(x), want)


@pytest.mark.parametrize("count", [2, 3])
def test_each_share_keeps_its_rows_of_the_global_mask(count):
    """Every rank seeds alike and holds an equal share: the shares' outputs, side by side,
    are the one-process output of the whole batch (an MLP with dropout, forward and grads)."""
    torch.manual_seed(0)
    mlp = MLP(8, [16, 16], dropout=0.5, out_dim=1)
    x = torch.randn(6 * count, 8)
    torch.manual_seed(7)
    whole = mlp(x)
    whole.sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    parts = []
    mlp.zero_grad()
    for index, rows in enumerate(x.chunk(count)):
        torch.manual_seed(7)  # every rank starts from the same state
        with sharing(index, count):
            part = mlp(rows)
        part.sum().backward()
        parts.append(part)
    assert_close(torch.cat(parts), whole)
    for p, g in zip(mlp.parameters(), grads, strict=True):
        assert_close(p.grad, g)


def test_eval_and_zero_p_leave_the_input_alone_and_bad_p_is_refused():
    x = torch.randn(4, 3)
    assert torch.equal(BatchDropout(0.5).eval()(x), x)
    assert torch.equal(BatchDropout(0.0)(x), x)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        BatchDropout(1.0)
