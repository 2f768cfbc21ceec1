"""KL-Cov policy loss (spec-rewards §A7.2; Cui et al. 2025; verl ``compute_policy_loss_kl_cov``).

* value and gradient against a slow reference written from the formula with Python loops (random
  inputs, padding holding NaN, per-sequence and per-token advantages, several ratios and modes);
* the selection rule ``k = max(int(n_valid·ratio), 1)`` over the valid tokens of the call, the
  ``kl_cov_frac`` metric, ratio 0 = vanilla policy gradient, the on-policy step;
* option validation.
"""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.losses import available_policy_losses, policy_loss, policy_loss_options
from grouprl.losses.policy import kl_cov_mask

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Slow reference: plain Python floats, one token at a time
# ----------------------------------------------------------------------------------------------


def _per_token(adv, n, t):
    return [[adv[i][j] if isinstance(adv[i], list) else adv[i] for j in range(t)]
            for i in range(n)]


def ref_selected(lp, adv, mask, ratio):
    n, t = len(lp), len(lp[0])
    A = _per_token(adv, n, t)
    valid = [(i, j) for i in range(n) for j in range(t) if mask[i][j]]
    if ratio == 0 or not valid:
        return set()
    k = max(int(len(valid) * ratio), 1)
    a_bar = sum(A[i][j] for i, j in valid) / len(valid)
    l_bar = sum(lp[i][j] for i, j in valid) / len(valid)
    cov = {(i, j): (A[i][j] - a_bar) * (lp[i][j] - l_bar) for i, j in valid}
    return set(sorted(valid, key=lambda ij: -cov[ij])[:k])


def ref_weights(mask, agg):
    """Aggregation weight of every token (native compat)."""
    lengths = [sum(1 for m in row if m) for row in mask]
    n_tok = sum(lengths)
    n_seq = sum(1 for n in lengths if n > 0)
    if agg == "token-mean":
        return [[1 / max(n_tok, 1) if m else 0.0 for m in row] for row in mask]
    assert agg == "seq-mean-token-mean"
    return [[1 / (max(n_seq, 1) * max(lengths[i], 1)) if m else 0.0 for m in row]
            for i, row in enumerate(mask)]


def ref_kl_cov(lp, old, adv, mask, ratio=0.002, coef=1.0, agg="seq-mean-token-mean"):
    """(loss, d loss / d lp, selected) from the KL-Cov formula."""
    n, t = len(lp), len(lp[0])
    A = _per_token(adv, n, t)
    sel = ref_selected(lp, adv, mask, ratio)
    w = ref_weights(mask, agg)
    loss, grad = 0.0, [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            if not mask[i][j]:
                continue
            d = max(-20.0, min(20.0, lp[i][j] - old[i][j]))
            r = math.exp(d)
            tok = -A[i][j] * r                                     # −Â·r
            g = -A[i][j] * r
            if (i, j) in sel:
                tok += coef * abs(d)                               # + k·|ℓ − ℓ_old|
                g += coef * (1.0 if d > 0 else -1.0 if d < 0 else 0.0)
            loss += w[i][j] * tok
            grad[i][j] = w[i][j] * g
    return loss, grad, sel


def random_batch(seed, n=5, t=9, per_token=False, p_pad=0.3):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(n, t, generator=g, dtype=F64) * 3
    old = lp + 0.3 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn((n, t) if per_token else (n,), generator=g, dtype=F64)
    mask = torch.rand(n, t, generator=g) > p_pad
    mask[0] = False                                                # an empty row
    mask[1, 0] = True
    lp = torch.where(mask, lp, math.nan)                           # padding holds NaN
    old = torch.where(mask, old, math.inf)
    return lp, old, adv, mask


# ----------------------------------------------------------------------------------------------
# Value, gradient, selection
# ----------------------------------------------------------------------------------------------


def test_registered_with_seq_mean_token_mean_default():
    assert "kl_cov" in available_policy_losses()
    o = policy_loss_options("kl_cov")
    assert o["kl_cov_ratio"] == 0.002 and o["ppo_kl_coef"] == 1.0
    lp, old, adv, mask = random_batch(0)
    leaf = lp.clone().requires_grad_(True)
    default, _ = policy_loss("kl_cov", leaf, old, adv, mask, kl_cov_ratio=0.1)
    explicit, _ = policy_loss("kl_cov", leaf, old, adv, mask, "seq-mean-token-mean",
                              kl_cov_ratio=0.1)
    assert default.item() == explicit.item()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [0.002, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_value_and_gradient_match_slow_reference(seed, ratio, per_token, agg):
    lp, old, adv, mask = random_batch(seed, per_token=per_token)
    coef = 0.7 + seed
    leaf = lp.clone().requires_grad_(True)
    loss, metrics = policy_loss("kl_cov", leaf, old, adv, mask, agg, kl_cov_ratio=ratio,
                                ppo_kl_coef=coef)
    loss.backward()
    ref_loss, ref_grad, sel = ref_kl_cov(lp.tolist(), old.tolist(), adv.tolist(),
                                         mask.tolist(), ratio, coef, agg)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(leaf.grad, torch.tensor(ref_grad, dtype=F64), rtol=1e-10,
                               atol=1e-12)
    n_valid = int(mask.sum())
    assert len(sel) == max(int(n_valid * ratio), 1)
    assert metrics["kl_cov_frac"] == pytest.approx(len(sel) / n_valid)
    picked = kl_cov_mask(adv[:, None].expand_as(lp) if adv.dim() == 1 else adv,
                         torch.where(mask, lp, 0.0), mask, ratio)
    assert {tuple(ij) for ij in picked.nonzero().tolist()} == sel


def test_gradcheck():
    lp, old, adv, mask = random_batch(3, per_token=True, p_pad=0.0)
    lp, old = lp[1:], old[1:]
    adv, mask = adv[1:], torch.ones_like(mask[1:])

    def f(x):
        return policy_loss("kl_cov", x, old, adv, mask, kl_cov_ratio=0.2, ppo_kl_coef=2.0)[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),), eps=1e-7, atol=1e-6)


def test_count_rule_and_metric():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(10, 10, generator=g, dtype=F64)
    adv = torch.randn(10, generator=g, dtype=F64)
    mask = torch.ones(10, 10, dtype=torch.bool)
    for ratio, k in [(0.002, 1), (0.0199, 1), (0.02, 2), (0.035, 3), (0.5, 50), (1.0, 100)]:
        _, m = policy_loss("kl_cov", lp, lp + 0.1, adv, mask, kl_cov_ratio=ratio)
        assert m["kl_cov_frac"] == pytest.approx(k / 100)
    _, m = policy_loss("kl_cov", lp, lp + 0.1, adv, mask, kl_cov_ratio=0.0)
    assert m["kl_cov_frac"] == 0.0


def test_selects_the_largest_covariance_tokens_of_the_valid_ones():
    # covariance (A − Ā)(ℓ − ℓ̄) is largest where Â and ℓ are both far on the same side
    lp = torch.tensor([[-0.1, -5.0, -0.2], [-3.0, -3.0, 9.9]], dtype=F64)
    adv = torch.tensor([[2.0, 2.0, 2.0], [-2.0, -2.0, 50.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)   # (1, 2) is padding
    picked = kl_cov_mask(adv, lp, mask, 0.2)                          # k = int(5·0.2) = 1
    # Ā = 0.4, ℓ̄ = −2.26: (0,0): 1.6·2.16, (1,0)/(1,1): −2.4·−0.74 = 1.776, (0,2): 1.6·2.06
    assert picked.tolist() == [[True, False, False], [False, False, False]]
    picked = kl_cov_mask(adv, lp, mask, 0.4)                          # k = 2
    assert picked.tolist() == [[True, False, True], [False, False, False]]


def test_ratio_zero_is_vanilla_policy_gradient():
    lp, old, adv, mask = random_batch(4, per_token=True)
    a = lp.clone().requires_grad_(True)
    b = lp.clone().requires_grad_(True)
    la, ma = policy_loss("kl_cov", a, old, adv, mask, kl_cov_ratio=0.0)
    lb, _ = policy_loss("ppo", b, old, adv, mask, "seq-mean-token-mean", clip_low=1.0,
                        clip_high=1e9)                               # max(−rÂ, −clip(r)Â) = −rÂ
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-14)
    torch.testing.assert_close(a.grad, b.grad)
    assert ma["kl_cov_frac"] == 0.0 and ma["clipfrac"] == 0.0


def test_on_policy_step_adds_nothing():
    lp, _, adv, mask = random_batch(5)
    a = lp.clone().requires_grad_(True)
    b = lp.clone().requires_grad_(True)
    la, _ = policy_loss("kl_cov", a, a.detach(), adv, mask, kl_cov_ratio=0.5, ppo_kl_coef=10.0)
    lb, _ = policy_loss("kl_cov", b, b.detach(), adv, mask, kl_cov_ratio=0.0)
    la.backward()
    lb.backward()
    assert la.item() == lb.item()
    torch.testing.assert_close(a.grad, b.grad)                        # ∂|δ|/∂δ = 0 at δ = 0


def test_fully_masked_call_gives_zero():
    lp = torch.full((2, 3), math.nan, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, m = policy_loss("kl_cov", lp, lp.detach(), torch.ones(2, dtype=F64), mask)
    loss.backward()
    assert loss.item() == 0.0 and m["kl_cov_frac"] == 0.0
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_float32_and_bfloat16_inputs():
    lp, old, adv, mask = random_batch(6)
    ref, _, _ = ref_kl_cov(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.3)
    for dt in (torch.float32, torch.bfloat16):
        loss, _ = policy_loss("kl_cov", lp.to(dt), old.to(dt), adv.to(dt), mask,
                              kl_cov_ratio=0.3)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(ref, abs=0.05)


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, option", [
    ({"clip_low": 0.2}, "clip_low"),
    ({"kl_cov_ratoi": 0.1}, "kl_cov_ratoi"),
    ({"kl_cov_ratio": -0.1}, "kl_cov_ratio"),
    ({"kl_cov_ratio": 1.5}, "kl_cov_ratio"),
    ({"kl_cov_ratio": math.nan}, "kl_cov_ratio"),
    ({"kl_cov_ratio": True}, "kl_cov_ratio"),
    ({"kl_cov_ratio": "0.1"}, "kl_cov_ratio"),
    ({"ppo_kl_coef": -1.0}, "ppo_kl_coef"),
    ({"ppo_kl_coef": math.inf}, "ppo_kl_coef"),
    ({"ppo_kl_coef": None}, "ppo_kl_coef"),
])
def test_option_errors_name_the_option(kwargs, option):
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=f"^{option}:"):
        policy_loss("kl_cov", lp, lp, torch.ones(1), torch.ones(1, 2), **kwargs)
    with pytest.raises(ValueError, match=f"^{option}:"):
        policy_loss_options("kl_cov", **kwargs)


def test_boundary_options_accepted():
    policy_loss_options("kl_cov", kl_cov_ratio=0, ppo_kl_coef=0)
    policy_loss_options("kl_cov", kl_cov_ratio=1.0, ppo_kl_coef=3)
