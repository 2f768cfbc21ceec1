"""KL estimators (spec-losses §5.1) and entropy (§5.3) against formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.losses.kl import KL_ALIASES, canonical_kl_kind, entropy_from_logits, kl_penalty


def pair(n=4, t=6, seed=0, scale=1.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = (-scale * torch.rand(n, t, generator=g, dtype=torch.float64)).to(dtype)
    ref = (-scale * torch.rand(n, t, generator=g, dtype=torch.float64)).to(dtype)
    return logp.requires_grad_(), ref


def elementwise(fn, logp, ref):
    """Apply a Python-float formula f(θ, ref) to every token (independent of torch ops)."""
    flat = [fn(a, b) for a, b in zip(logp.detach().flatten().tolist(), ref.flatten().tolist())]
    return torch.tensor(flat, dtype=torch.float64).reshape(logp.shape)


FORMULAS = {  # value of each estimator, u = ref − θ
    "k1": lambda th, rf: th - rf,
    "k2": lambda th, rf: 0.5 * (rf - th) ** 2,
    "k3": lambda th, rf: math.exp(rf - th) - (rf - th) - 1.0,
    "abs": lambda th, rf: abs(rf - th),
}
GRADIENTS = {  # ∂value/∂θ
    "k1": lambda th, rf: 1.0,
    "k2": lambda th, rf: th - rf,
    "k3": lambda th, rf: 1.0 - math.exp(rf - th),  # 1 − π_ref/π
    "abs": lambda th, rf: math.copysign(1.0, th - rf),
}


def value_and_grad(kind, logp, ref, **kw):
    value = kl_penalty(logp, ref, kind, **kw)
    (grad,) = torch.autograd.grad(value.sum(), logp)
    return value, grad


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_values_and_gradients_match_formulas(kind):
    logp, ref = pair()
    value, grad = value_and_grad(kind, logp, ref)
    torch.testing.assert_close(value, elementwise(FORMULAS[kind], logp, ref),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, elementwise(GRADIENTS[kind], logp, ref),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alias, kind", sorted(KL_ALIASES.items()))
def test_verl_aliases(alias, kind):
    logp, ref = pair(seed=1)
    assert canonical_kl_kind(alias) == kind
    v1, g1 = value_and_grad(alias, logp, ref)
    v2, g2 = value_and_grad(kind, logp, ref)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)


@pytest.mark.parametrize("base", ["k1", "k3", "abs", "k2"])
def test_straight_through_value_of_base_gradient_of_k2(base):
    logp, ref = pair(seed=2)
    v_plus, g_plus = value_and_grad(base + "+", logp, ref)
    v_base, _ = value_and_grad(base, logp, ref)
    torch.testing.assert_close(v_plus, v_base, rtol=0, atol=0)
    # documented target: ∂k2/∂θ = θ − ref (the unbiased reverse-KL gradient)
    torch.testing.assert_close(g_plus, (logp - ref).detach(), rtol=1e-12, atol=1e-12)


def test_straight_through_gradient_is_not_clamped_with_k3_clamp():
    logp = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([30.0, -5.0], dtype=torch.float64)  # u = 30 hits both verl clamps
    value, grad = value_and_grad("k3+", logp, ref)
    assert value[0].item() == 10.0  # clamped value (verl)
    torch.testing.assert_close(grad, torch.tensor([-30.0, 5.0], dtype=torch.float64))


def test_k3_clamps_native_and_verl_not_trl():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([1.0, 2.5, 25.0, -40.0], dtype=torch.float64)
    for compat in ("native", "verl"):
        value, grad = value_and_grad("k3", logp, ref, compat=compat)
        u = [1.0, 2.5, 20.0, -20.0]  # u clamped to [−20, 20], then the value to [−10, 10]
        expected = [min(max(math.exp(x) - x - 1, -10.0), 10.0) for x in u]
        torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
        # a clamped token gets no gradient (both clamps bind for 25 and −40)
        assert grad[2].item() == 0.0 and grad[3].item() == 0.0
        assert grad[0].item() == pytest.approx(1.0 - math.e)
        assert value[1].item() == pytest.approx(math.exp(2.5) - 3.5)  # below the clamp
    value, grad = value_and_grad("k3", logp, ref, compat="trl")
    expected = [math.exp(x) - x - 1 for x in (1.0, 2.5, 25.0, -40.0)]
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    assert grad[2].item() == pytest.approx(1.0 - math.exp(25.0))


def test_k1_k2_abs_are_never_clamped():
    logp = torch.tensor([0.0], dtype=torch.float64)
    ref = torch.tensor([-60.0], dtype=torch.float64)
    assert kl_penalty(logp, ref, "k1").item() == 60.0
    assert kl_penalty(logp, ref, "k2").item() == 1800.0
    assert kl_penalty(logp, ref, "abs").item() == 60.0


def test_k3_nonnegative():
    g = torch.Generator().manual_seed(3)
    logp = 10 * torch.randn(2000, generator=g)
    ref = 10 * torch.randn(2000, generator=g)
    for compat in ("native", "trl"):
        assert torch.all(kl_penalty(logp, ref, "k3", compat=compat) >= 0)
    # exactly 0 when equal, including tiny |u| (expm1 keeps it ≥ 0 without rounding below 0)
    tiny = torch.tensor([1e-9, -1e-9, 0.0])
    assert torch.all(kl_penalty(torch.zeros(3), tiny, "k3") >= 0)


def test_k1_and_k3_unbiased_for_kl():
    """E_{x~π}[k1] = E_{x~π}[k3] = KL(π‖π_ref), estimated from samples of π (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    vocab = 20
    log_pi = torch.log_softmax(torch.randn(vocab, generator=g, dtype=torch.float64), 0)
    log_ref = torch.log_softmax(torch.randn(vocab, generator=g, dtype=torch.float64), 0)
    exact = float((log_pi.exp() * (log_pi - log_ref)).sum())
    x = torch.multinomial(log_pi.exp(), 400_000, replacement=True, generator=g)
    k1 = kl_penalty(log_pi[x], log_ref[x], "k1").mean().item()
    k3 = kl_penalty(log_pi[x], log_ref[x], "k3", compat="trl").mean().item()
    k2 = kl_penalty(log_pi[x], log_ref[x], "k2").mean().item()
    assert exact > 0.1
    assert k1 == pytest.approx(exact, rel=0.03)
    assert k3 == pytest.approx(exact, rel=0.03)
    assert abs(k2 - exact) > 0.05 * exact  # k2 is biased: the sanity check can tell the difference
    # k3 has lower variance than k1
    assert kl_penalty(log_pi[x], log_ref[x], "k3").var() < kl_penalty(log_pi[x], log_ref[x],
                                                                        "k1").var()


def test_trl_bias_corrected_k3_gradient_equals_k2_at_ratio_one():
    """TRL: r·k3 with a differentiable on-policy ratio r = exp(ℓ − sg ℓ) has the k2 gradient."""
    logp, ref = pair(seed=4)
    ratio = torch.exp(logp - logp.detach())
    (g_trl,) = torch.autograd.grad((ratio * kl_penalty(logp, ref, "k3", compat="trl")).sum(),
                                   logp)
    (g_k2,) = torch.autograd.grad(kl_penalty(logp, ref, "k2").sum(), logp)
    torch.testing.assert_close(g_trl, g_k2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs", "k3+"])
def test_mask_blocks_nan_in_padding(kind):
    logp, ref = pair(seed=5)
    mask = torch.ones_like(ref)
    mask[:, -2:] = 0
    bad_logp = logp.detach().clone()
    bad_logp[:, -2:] = float("nan")
    bad_logp.requires_grad_()
    bad_ref = ref.clone()
    bad_ref[:, -1] = float("inf")
    v, g = value_and_grad(kind, bad_logp, bad_ref, mask=mask)
    v_clean, g_clean = value_and_grad(kind, logp, ref, mask=mask)
    assert torch.all(torch.isfinite(v)) and torch.all(torch.isfinite(g))
    assert torch.all(v[:, -2:] == 0) and torch.all(g[:, -2:] == 0)
    torch.testing.assert_close(v, v_clean, rtol=0, atol=0)
    torch.testing.assert_close(g, g_clean, rtol=0, atol=0)


def test_half_precision_is_upcast():
    logp, ref = pair(dtype=torch.bfloat16, seed=6)
    out = kl_penalty(logp, ref, "k3")
    assert out.dtype == torch.float32
    expected = kl_penalty(logp.detach().float(), ref.float(), "k3")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_errors_name_the_argument():
    logp, ref = pair()
    with pytest.raises(ValueError, match="kind.*'k3'.*'low_var_kl'"):
        kl_penalty(logp, ref, "full")
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(logp, ref, None)
    with pytest.raises(ValueError, match="compat"):
        kl_penalty(logp, ref, "k3", compat="openrlhf")
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty(logp, ref[:, :-1], "k3")
    with pytest.raises(ValueError, match="mask"):
        kl_penalty(logp, ref, "k3", mask=torch.ones(2))
    with pytest.raises(ValueError, match="logp"):
        kl_penalty(torch.zeros(2, dtype=torch.long), torch.zeros(2), "k3")


# ------------------------------------------------------------------------------- entropy


def entropy_reference(logits, temperature=1.0):
    """H = −Σ p log p from Python floats, one position at a time."""
    out = []
    for row in (logits.detach().double() / temperature).reshape(-1, logits.shape[-1]).tolist():
        m = max(row)
        s = sum(math.exp(x - m) for x in row)
        ps = [math.exp(x - m) / s for x in row]
        out.append(-sum(p * math.log(p) for p in ps if p > 0))
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape[:-1])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_entropy_matches_formula(temperature, chunk_size):
    g = torch.Generator().manual_seed(7)
    logits = 4 * torch.randn(3, 5, 17, generator=g, dtype=torch.float64)
    ent = entropy_from_logits(logits, temperature=temperature, chunk_size=chunk_size)
    torch.testing.assert_close(ent, entropy_reference(logits, temperature),
                               rtol=1e-10, atol=1e-10)


def test_entropy_gradient_matches_autograd_of_naive():
    g = torch.Generator().manual_seed(8)
    logits = (3 * torch.randn(2, 4, 9, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    (g1,) = torch.autograd.grad((entropy_from_logits(logits, temperature=0.8,
                                                     chunk_size=3) * w).sum(), logits)
    z = torch.log_softmax(logits / 0.8, -1)
    (g2,) = torch.autograd.grad((-(z.exp() * z).sum(-1) * w).sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_entropy_stable_for_extreme_logits_and_bf16():
    logits = torch.tensor([[[3e4, 0.0, -3e4, 0.0], [80.0, 80.0, 80.0, 80.0]]])
    ent = entropy_from_logits(logits)
    assert torch.all(torch.isfinite(ent))
    torch.testing.assert_close(ent, torch.tensor([[0.0, math.log(4.0)]]), rtol=1e-6, atol=1e-6)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 11, generator=g).to(torch.bfloat16)
    ent = entropy_from_logits(x, chunk_size=2)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, entropy_reference(x).float(), rtol=1e-5, atol=1e-5)
