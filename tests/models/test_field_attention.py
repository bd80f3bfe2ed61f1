"""Field self-attention: the native CPU kernel against a float64 reference (values and
gradients of q, k and v), and the torch fallback where the kernel does not apply."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb import native
from recemb.models import field_attention
from recemb.models.field_attention import field_self_attention, projected_field_attention, sdpa_field_attention

KERNEL = native.load("attention")
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="native attention kernel not built on this machine")


def reference(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v by explicit einsums in float64: [B, F, 3, H, d] -> [B, F, H, d]."""
    q, k, v = qkv.double().unbind(2)  # each [B, F, H, d]
    probs = (torch.einsum("bfhd,bghd->bhfg", q, k) * scale).softmax(-1)
    return torch.einsum("bhfg,bghd->bfhd", probs, v)


def values_and_grads(fn, qkv: torch.Tensor, weights: torch.Tensor, scale: float):
    x = qkv.detach().clone().requires_grad_()
    out = fn(x, scale)
    (out * weights.to(out.dtype)).sum().backward()
    return out.detach().double(), x.grad.double()


# (batch, fields, heads, head width): fields across every padded size the kernel compiles
# (16, 32, 48, 64) and their edges, every head width
SHAPES = [
    (3, 1, 1, 8),
    (4, 5, 2, 4),
    (2, 16, 3, 16),
    (5, 17, 2, 8),
    (3, 26, 2, 8),
    (4, 39, 2, 8),
    (2, 48, 1, 32),
    (2, 64, 2, 16),
]


@needs_kernel
@pytest.mark.parametrize("batch, fields, heads, width", SHAPES)
def test_kernel_matches_the_reference_values_and_gradients(batch, fields, heads, width):
    gen = torch.Generator().manual_seed(fields * 31 + width)
    qkv = torch.randn(batch, fields, 3, heads, width, generator=gen) * 1.5  # peaked softmax rows too
    weights = torch.randn(batch, fields, heads, width, generator=gen)
    scale = width**-0.5
    out, grad = values_and_grads(field_self_attention, qkv, weights, scale)
    want_out, want_grad = values_and_grads(reference, qkv.double(), weights, scale)
    assert_close(out, want_out, atol=2e-5, rtol=1e-5)
    assert_close(grad, want_grad, atol=5e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("fields, width", [(5, 4), (26, 8), (64, 32)])
def test_kernel_saves_each_score_rows_log_sum_exp(fields, width):
    """lse [B, H, F], from which backward recomputes the softmax, against torch.logsumexp;
    rows whose scores are far apart too (a sum of exponentials near 1) and close (near F)."""
    gen = torch.Generator().manual_seed(fields)
    spread = torch.tensor([0.1, 1.0, 4.0]).repeat(2).view(6, 1, 1, 1, 1)  # per sample
    qkv = torch.randn(6, fields, 3, 2, width, generator=gen) * spread
    _, lse = KERNEL.forward(qkv, width**-0.5)
    q, k, _ = qkv.double().unbind(2)
    want = torch.einsum("bfhd,bghd->bhfg", q, k).mul(width**-0.5).logsumexp(-1)  # [B, H, F]
    assert_close(lse.double(), want, atol=2e-6, rtol=1e-6)


@needs_kernel
def test_kernel_is_the_path_taken_and_agrees_with_sdpa(monkeypatch):
    calls = []
    apply = field_attention._NativeFieldAttention.apply
    monkeypatch.setattr(field_attention._NativeFieldAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    qkv = torch.randn(8, 39, 3, 2, 8)
    got = field_self_attention(qkv, 0.35)
    assert len(calls) == 1
    assert_close(got, sdpa_field_attention(qkv, 0.35), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_kernel_gives_the_same_bits_on_any_number_of_threads():
    qkv = torch.randn(64, 30, 3, 2, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            qkv.grad = None
            out = field_self_attention(qkv, 0.3)
            out.sum().backward()
            results.append((out.detach(), qkv.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@needs_kernel
def test_kernel_takes_a_strided_input_and_extreme_scores():
    """A non-contiguous view (copied once); and scores hundreds apart, where each softmax row
    is one 1 (exp underflows for the rest): the output is the value of the best key."""
    base = torch.randn(4, 12, 3, 2, 8 * 2)
    qkv = base[..., ::2]  # [4, 12, 3, 2, 8], not contiguous
    assert not qkv.is_contiguous()
    assert_close(field_self_attention(qkv, 1.0).double(), reference(qkv, 1.0), atol=2e-5, rtol=1e-5)

    fields = 10
    qkv = torch.zeros(2, fields, 3, 1, 4)
    qkv[:, :, 1, 0, 0] = torch.arange(fields) * 10.0  # key g: (10 g, 0, 0, 0)
    qkv[0, :, 0, 0, 0] = 50.0  # sample 0 asks for the largest key, sample 1 for the smallest
    qkv[1, :, 0, 0, 0] = -50.0
    qkv[:, :, 2] = torch.randn(2, fields, 1, 4)
    out = field_self_attention(qkv, 1.0)  # [2, F, 1, 4]
    assert torch.isfinite(out).all()
    assert_close(out[0], qkv[0, -1, 2].expand(fields, 1, 4))
    assert_close(out[1], qkv[1, 0, 2].expand(fields, 1, 4))


def projected_reference(x: torch.Tensor, weight: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """reference() of qkv = x weight^T viewed [B, F, 3, heads, d], in float64."""
    batch, fields, _ = x.shape
    qkv = torch.nn.functional.linear(x.double(), weight.double())
    return reference(qkv.view(batch, fields, 3, heads, -1), scale)


def projected_values_and_grads(fn, x, weight, heads, weights, scale):
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    out = fn(x, weight, heads, scale)
    (out * weights.to(out.dtype)).sum().backward()
    return out.detach().double(), x.grad.double(), weight.grad.double()


# (batch, fields, in, heads, head width): inputs whose width is not a multiple of 16 and
# projections narrower than 16 (3 * 1 * 4) take the kernel's column-by-column tail; a batch
# past one 32-sample share of the weight gradient
PROJECTED_SHAPES = [(3, 1, 4, 1, 4), (5, 13, 12, 4, 4), (40, 26, 16, 2, 8), (3, 39, 7, 2, 8), (2, 64, 32, 1, 32)]


@needs_kernel
@pytest.mark.parametrize("batch, fields, in_dim, heads, width", PROJECTED_SHAPES)
def test_projected_kernel_matches_the_reference_values_and_gradients(batch, fields, in_dim, heads, width):
    gen = torch.Generator().manual_seed(fields * 7 + in_dim)
    x = torch.randn(batch, fields, in_dim, generator=gen)
    weight = torch.randn(3 * heads * width, in_dim, generator=gen) * 1.5 / in_dim**0.5
    weights = torch.randn(batch, fields, heads, width, generator=gen)
    scale = width**-0.5
    got = projected_values_and_grads(projected_field_attention, x, weight, heads, weights, scale)
    want = projected_values_and_grads(projected_reference, x.double(), weight.double(), heads, weights, scale)
    for g, w, tol in zip(got, want, (2e-5, 5e-5, 5e-5 * batch)):  # the weight's gradient sums over the batch
        assert_close(g, w, atol=tol, rtol=1e-5)


@needs_kernel
def test_projected_kernel_is_the_path_taken_and_its_gradients_do_not_depend_on_threads(monkeypatch):
    calls = []
    apply = field_attention._NativeProjectedFieldAttention.apply
    count = lambda *a: calls.append(1) or apply(*a)  # noqa: E731
    monkeypatch.setattr(field_attention._NativeProjectedFieldAttention, "apply", count)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(100, 30, 16, generator=gen, requires_grad=True)
    weight = torch.randn(48, 16, generator=gen, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            x.grad = weight.grad = None
            out = projected_field_attention(x, weight, 2, 0.3)
            out.square().sum().backward()
            results.append((out.detach(), x.grad.clone(), weight.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_projected_attention_without_the_kernel_has_the_same_values(monkeypatch):
    """Where the kernel does not apply (here a head width of 6), F.linear and the qkv path."""
    x, weight = torch.randn(4, 9, 10), torch.randn(36, 10) * 0.3
    assert field_attention._kernel_for_shape(x, 9, 6) is None
    weights = torch.randn(4, 9, 2, 6)
    got = projected_values_and_grads(projected_field_attention, x, weight, 2, weights, 0.4)
    want = projected_values_and_grads(projected_reference, x.double(), weight.double(), 2, weights, 0.4)
    for g, w in zip(got, want):
        assert_close(g, w, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "x_shape, weight_shape, heads, message",
    [
        ((2, 5, 8), (48, 7), 2, r"weight \[3 \* heads \* d, in\], got shapes \(2, 5, 8\) and \(48, 7\)"),
        ((2, 5, 8, 1), (48, 8), 2, r"x must be \[B, F, in\]"),
        ((2, 5, 8), (40, 8), 2, r"weight's rows \(40\) must be 3 \* heads \(2\) \* d"),
        ((2, 5, 8), (48, 8), 0, r"heads must be >= 1, got 0"),
    ],
)
def test_projected_attention_refuses_mismatched_shapes(x_shape, weight_shape, heads, message):
    with pytest.raises(ValueError, match=message):
        projected_field_attention(torch.randn(x_shape), torch.randn(weight_shape), heads, 1.0)


@pytest.mark.parametrize(
    "qkv",
    [
        torch.randn(3, 7, 3, 2, 6),  # a head width the kernel does not compile
        torch.randn(2, 70, 3, 1, 8),  # more fields than it takes
        torch.randn(3, 7, 3, 2, 8, dtype=torch.float64),  # not float32
        torch.randn(0, 7, 3, 2, 8),  # no samples
    ],
    ids=["width6", "fields70", "float64", "empty"],
)
def test_other_inputs_take_the_torch_path_with_the_same_values(qkv):
    assert field_attention._kernel_for(qkv) is None
    weights = torch.randn(*qkv.shape[:2], *qkv.shape[3:])
    out, grad = values_and_grads(field_self_attention, qkv, weights, 0.5)
    want_out, want_grad = values_and_grads(reference, qkv.double(), weights, 0.5)
    assert_close(out, want_out, atol=2e-5, rtol=1e-5)
    assert_close(grad, want_grad, atol=5e-5, rtol=1e-5)


def test_a_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"qkv must be \[B, F, 3, H, d\], got shape \(2, 5, 4, 1, 8\)"):
        field_self_attention(torch.randn(2, 5, 4, 1, 8), 1.0)


def test_recemb_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("RECEMB_NATIVE", "0")
    native.load.cache_clear()
    try:
        assert not native.enabled()
        assert native.load("attention") is None
        assert field_attention._kernel_for(torch.randn(2, 5, 3, 1, 8)) is None
    finally:
        monkeypatch.delenv("RECEMB_NATIVE")
        native.load.cache_clear()
    with pytest.raises(ValueError, match="no native kernel named 'nope'"):
        native.load("nope")
