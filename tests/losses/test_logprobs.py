"""token_logprobs: equality with the naive log_softmax+gather, chunking, memory, ignore index."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from grouprl.losses.kl import entropy_from_logits
from grouprl.losses.logprobs import IGNORE_INDEX, token_logprobs


def naive(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """The reference: full fp32 (fp64 for fp64) log_softmax, gather, entropy."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    ignore = labels == IGNORE_INDEX
    logp = z.gather(-1, labels.masked_fill(ignore, 0).unsqueeze(-1)).squeeze(-1)
    logp = logp.masked_fill(ignore, 0.0)
    ent = -(z.exp() * z).sum(-1)
    return logp, ent


def make(n=3, t=7, v=13, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, t, v, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n, t), generator=g)
    return logits, labels


def grads(fn, logits, labels, with_entropy, seed=1):
    """Value and gradient of Σ a·ℓ + Σ b·H (random a, b) w.r.t. the logits."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(labels.shape, generator=g, dtype=torch.float64)
    b = torch.randn(labels.shape, generator=g, dtype=torch.float64)
    logp, ent = fn()
    obj = (logp.double() * a).sum()
    if with_entropy:
        obj = obj + (ent.double() * b).sum()
    (grad,) = torch.autograd.grad(obj, logits)
    return logp, ent, grad


TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_matches_naive_value_and_gradient(dtype, temperature, with_entropy):
    logits, labels = make(dtype=dtype)
    labels[0, 2] = IGNORE_INDEX
    _, _, g_ref = grads(lambda: naive(logits, labels, temperature), logits, labels, with_entropy)
    lp_ref, ent_ref = naive(logits, labels, temperature)

    def ours():
        out = token_logprobs(logits, labels, temperature=temperature,
                             with_entropy=with_entropy, chunk_size=4)
        return out if with_entropy else (out, None)

    lp, ent, g = grads(ours, logits, labels, with_entropy)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert lp.dtype == expected_dtype and lp.shape == labels.shape
    torch.testing.assert_close(lp, lp_ref.detach(), **TOL[dtype])
    if with_entropy:
        assert ent.dtype == expected_dtype
        torch.testing.assert_close(ent, ent_ref.detach(), **TOL[dtype])
    assert g.dtype == dtype  # the gradient comes back in the logits' dtype
    if dtype in (torch.bfloat16, torch.float16):
        # both sides compute in fp32 and round once to half precision: equal up to one ulp
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=1e-2, atol=1e-3)
    else:
        torch.testing.assert_close(g, g_ref, **TOL[dtype])


def test_gradient_of_logp_is_onehot_minus_softmax_over_temperature():
    logits, labels = make(n=2, t=3, v=5, dtype=torch.float64)
    tau = 0.5
    lp = token_logprobs(logits, labels, temperature=tau)
    (g,) = torch.autograd.grad(lp.sum(), logits)
    p = torch.softmax(logits.detach() / tau, -1)
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    torch.testing.assert_close(g, (onehot - p) / tau, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_size_invariance(dtype):
    logits, labels = make(n=4, t=5, v=11, dtype=dtype, seed=3)
    labels[1, 4] = IGNORE_INDEX
    results = []
    for chunk in (1, 2, 4, 5, 6, 7, 20, 1000, None):
        lp, ent, g = grads(lambda c=chunk: token_logprobs(logits, labels, with_entropy=True,
                                                          chunk_size=c),
                           logits, labels, True)
        results.append((lp, ent, g))
    for lp, ent, g in results[1:]:
        torch.testing.assert_close(lp, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ent, results[0][1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.float(), results[0][2].float(), rtol=1e-2, atol=1e-3)


class MaxFloat32Numel(TorchDispatchMode):
    """Records the largest float32 tensor produced by any ATen op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def run_recorded(fn):
    rec = MaxFloat32Numel()
    with rec:
        fn()
    return rec.largest


@pytest.mark.parametrize("with_entropy", [False, True])
def test_never_materialises_fp32_copy_of_full_logits(with_entropy):
    n, t, v, chunk = 4, 6, 50, 3
    logits, labels = make(n=n, t=t, v=v, dtype=torch.bfloat16)

    def ours():
        out = token_logprobs(logits, labels, with_entropy=with_entropy, chunk_size=chunk)
        lp, ent = out if with_entropy else (out, None)
        loss = lp.sum() + (ent.sum() if with_entropy else 0.0)
        loss.backward()

    def reference():
        lp, ent = naive(logits, labels)
        (lp.sum() + ent.sum()).backward()

    # the detector is able to fail: the naive path produces a full-size fp32 tensor
    assert run_recorded(reference) >= n * t * v
    # ours, forward + backward: nothing fp32 larger than one block of chunk × V elements
    assert run_recorded(ours) <= chunk * v
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


def test_entropy_from_logits_never_materialises_fp32_copy():
    logits, _ = make(n=4, t=6, v=50, dtype=torch.bfloat16)
    largest = run_recorded(lambda: entropy_from_logits(logits, chunk_size=5).sum().backward())
    assert largest <= 5 * 50


def test_sliced_noncontiguous_logits():
    full, ids = make(n=3, t=8, v=9, dtype=torch.float32, seed=5)
    logits, labels = full[:, :-1], ids[:, 1:]  # the usual causal shift: a strided view
    assert not logits.is_contiguous()
    lp, ent, g = grads(lambda: token_logprobs(logits, labels, with_entropy=True, chunk_size=2),
                       full, labels, True)
    lp_r, ent_r, g_r = grads(lambda: naive(logits, labels), full, labels, True)
    torch.testing.assert_close(lp, lp_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_r, rtol=1e-5, atol=1e-5)
    assert torch.all(g[:, -1] == 0)  # the dropped last position gets no gradient


def test_ignore_index_gives_zero_and_no_gradient():
    logits, labels = make(n=2, t=4, v=6, dtype=torch.float32)
    labels[0, 1] = IGNORE_INDEX
    labels[1] = IGNORE_INDEX  # a fully ignored row
    lp = token_logprobs(logits, labels, chunk_size=3)
    assert lp[0, 1] == 0 and torch.all(lp[1] == 0)
    assert torch.all(lp[0, [0, 2, 3]] < 0)
    (g,) = torch.autograd.grad(lp.sum(), logits)
    assert torch.all(g[0, 1] == 0) and torch.all(g[1] == 0)
    assert torch.all(torch.isfinite(g))


def test_all_ignored_and_empty():
    logits, labels = make(n=2, t=3, v=4)
    labels.fill_(IGNORE_INDEX)
    lp, ent = token_logprobs(logits, labels, with_entropy=True)
    assert torch.all(lp == 0) and torch.all(ent > 0)
    empty = torch.zeros(2, 0, 4, requires_grad=True)
    lp = token_logprobs(empty, torch.zeros(2, 0, dtype=torch.long))
    assert lp.shape == (2, 0)
    lp.sum().backward()
    assert empty.grad.shape == empty.shape


def test_two_dimensional_input():
    logits, labels = make(n=1, t=5, v=7)
    lp2 = token_logprobs(logits[0], labels[0])
    assert lp2.shape == (5,)
    torch.testing.assert_close(lp2, naive(logits, labels)[0][0].detach())


def test_large_logits_are_stable():
    logits = torch.tensor([[[1e4, 0.0, -1e4], [50.0, 50.0, 50.0]]], dtype=torch.bfloat16)
    labels = torch.tensor([[0, 2]])
    lp, ent = token_logprobs(logits, labels, with_entropy=True)
    assert torch.all(torch.isfinite(lp)) and torch.all(torch.isfinite(ent))
    torch.testing.assert_close(lp, torch.tensor([[0.0, -torch.log(torch.tensor(3.0))]]))
    torch.testing.assert_close(ent[0, 1], torch.log(torch.tensor(3.0)))


def test_no_grad_path():
    logits, labels = make()
    with torch.no_grad():
        lp = token_logprobs(logits, labels)
    assert not lp.requires_grad
    torch.testing.assert_close(lp, naive(logits, labels)[0].detach())


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=torch.full((3, 7), 13)), "labels"),
    (dict(labels=torch.full((3, 7), -1)), "labels"),
    (dict(labels=torch.zeros(3, 6, dtype=torch.long)), "labels"),
    (dict(labels=torch.zeros(3, 7)), "labels"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(with_entropy="yes"), "with_entropy"),
])
def test_errors_name_the_argument(kwargs, match):
    logits, labels = make()
    args = dict(labels=labels) | kwargs
    with pytest.raises(ValueError, match=match):
        token_logprobs(logits, **args)
    with pytest.raises(ValueError, match="logits"):
        token_logprobs(torch.zeros(3, 7, 13, dtype=torch.long), labels)
