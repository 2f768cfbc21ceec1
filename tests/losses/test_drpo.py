"""DRPO loss (spec-rewards §A9, §C7; Optimization-AI/DRPO ``compute_policy_loss_drpo``).

* the spec's weight vector, Σ w̃ = 1 per group, stability for small λ;
* value and gradient against a slow per-group loop reference on random batches (uneven groups,
  arbitrary ids), and the gradient against the reference code's ``S/sg(S)`` surrogate;
* the negative term's gradient is the softmax-weighted gradient of ``s_j`` (§C7);
* skipped groups (only positives / only negatives) add 0 but count in ``|Q_all|``;
* the β-KL term's value and gradient, micro-batch additivity with ``num_questions``/``kl_hinge``;
* option and input validation.
"""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.losses import SEQUENCE_LOSSES, drpo_loss, drpo_options, drpo_weights

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Slow references
# ----------------------------------------------------------------------------------------------


def ref_drpo(s, correct, length, group, *, lam, tau, l_max, num_questions=None, kl=None,
             hinge=None, beta=1e3, delta=1e-4):
    """Loop over groups, formula as written in the spec (torch scalars for autograd)."""
    ids = sorted(set(group.tolist()))
    total = s.new_zeros(())
    for g in ids:
        rows = [i for i in range(len(group)) if int(group[i]) == g]
        P = [i for i in rows if bool(correct[i])]
        N = [i for i in rows if not bool(correct[i])]
        if not P or not N:
            continue
        w = [math.exp((1 - float(length[i]) / l_max) / lam) for i in P]
        pos = sum(wi / sum(w) * s[i] for wi, i in zip(w, P))
        neg = tau * torch.log(sum(torch.exp(s[j] / tau) for j in N))
        total = total + pos - neg
    q = len(ids) if num_questions is None else num_questions
    loss = -total / q
    if kl is not None:
        h = float(kl) if hinge is None else hinge
        loss = loss + beta * max(h - delta, 0.0) * kl
    return loss


def ref_code_surrogate(s, correct, length, group, *, lam, tau, l_max):
    """The reference code's form: groups of equal size, ``S/sg(S)`` for the negative term."""
    order = torch.argsort(group, stable=True)
    q = int(torch.unique(group).numel())
    gs = s[order].view(q, -1)
    pos = correct[order].view(q, -1)
    neg = ~pos
    lr = (length[order].to(F64) / l_max).view(q, -1)
    valid = pos.any(1) & neg.any(1)
    gs, pos, neg, lr = gs[valid], pos[valid], neg[valid], lr[valid]
    z = (gs / tau).masked_fill(~neg, -math.inf)
    z_max = z.max(-1, keepdim=True).values
    e = torch.exp(((gs / tau) - z_max.detach()) * neg) * neg
    S = e.sum(-1, keepdim=True)
    surrogate = S / (S.detach() + torch.finfo(S.dtype).eps)
    w = torch.exp((1 - lr) / lam)
    per_q = (w * (gs - tau * surrogate) * pos).sum(1) / (w * pos).sum(1)
    return -per_q.sum() / q


def random_batch(seed, n_groups=7, sizes=(1, 2, 3, 5, 8)):
    g = torch.Generator().manual_seed(seed)
    group, correct = [], []
    for k in range(n_groups):
        size = sizes[int(torch.randint(len(sizes), (1,), generator=g))]
        gid = int(torch.randint(-1000, 1000, (1,), generator=g)) * 10 + k      # arbitrary ids
        group += [gid] * size
        correct += (torch.rand(size, generator=g) < 0.5).tolist()
    perm = torch.randperm(len(group), generator=g)                            # interleaved rows
    group = torch.tensor(group)[perm]
    correct = torch.tensor(correct)[perm]
    n = len(group)
    s = -3 * torch.rand(n, generator=g, dtype=F64)
    length = torch.randint(1, 512, (n,), generator=g)
    return s, correct, length, group


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def test_spec_weight_vector():
    w = drpo_weights(torch.tensor([100, 300]), torch.tensor([True, True]), torch.tensor([0, 0]),
                     lam=0.1, l_max=8192)
    assert w.tolist() == pytest.approx([0.5607, 0.4393], abs=1e-4)


def test_weights_sum_to_one_per_group_and_vanish_on_negatives():
    s, correct, length, group = random_batch(0, n_groups=12)
    for lam in (1e-3, 0.1, 10.0):
        w = drpo_weights(length, correct, group, lam=lam, l_max=512)
        assert torch.isfinite(w).all() and (w >= 0).all()
        assert (w[~correct] == 0).all()
        for gid in torch.unique(group):
            rows = group == gid
            total = float(w[rows].sum())
            assert total == pytest.approx(1.0 if bool(correct[rows].any()) else 0.0, abs=1e-12)
    # shorter positives weigh more; λ → ∞ gives uniform weights (DisCO)
    w = drpo_weights(torch.tensor([10, 20, 40, 5]), torch.tensor([True, True, True, False]),
                     torch.zeros(4, dtype=torch.long), lam=0.01, l_max=100)
    assert w[0] > w[1] > w[2] and w[3] == 0
    w = drpo_weights(torch.tensor([10, 20, 40]), torch.ones(3, dtype=torch.bool),
                     torch.zeros(3, dtype=torch.long), lam=1e12, l_max=100)
    assert w.tolist() == pytest.approx([1 / 3] * 3)


# ----------------------------------------------------------------------------------------------
# Loss value and gradient
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("lam, tau", [(0.1, 10.0), (0.5, 0.3), (0.02, 1.0)])
def test_matches_slow_per_group_reference(seed, lam, tau):
    s, correct, length, group = random_batch(seed)
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    loss, metrics = drpo_loss(a, correct, length, group, lam=lam, tau=tau, l_max=600)
    ref = ref_drpo(b, correct, length, group, lam=lam, tau=tau, l_max=600)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)
    n_valid = sum(1 for gid in torch.unique(group)
                  if correct[group == gid].any() and (~correct[group == gid]).any())
    assert metrics["drpo/valid_questions"] == n_valid
    assert metrics["drpo/kl_old"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_gradient_equals_reference_code_surrogate(seed):
    g = torch.Generator().manual_seed(seed)
    q, size = 6, 8
    group = torch.arange(q).repeat_interleave(size)[torch.randperm(q * size, generator=g)]
    correct = torch.rand(q * size, generator=g) < 0.4
    s = -2 * torch.rand(q * size, generator=g, dtype=F64)
    length = torch.randint(1, 8192, (q * size,), generator=g)
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    drpo_loss(a, correct, length, group, lam=0.1, tau=10.0, l_max=8192)[0].backward()
    ref_code_surrogate(b, correct, length, group, lam=0.1, tau=10.0, l_max=8192).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-14)


def test_negative_gradient_is_softmax_weighted():
    """§C7: ∂J/∂s_j = −softmax(s_N/τ)_j on negatives, ∂J/∂s_i = w̃_i on positives."""
    s = torch.tensor([-0.5, -1.0, -0.2, -2.0, -0.7], dtype=F64, requires_grad=True)
    correct = torch.tensor([True, True, False, False, False])
    length = torch.tensor([100, 300, 50, 80, 120])
    group = torch.zeros(5, dtype=torch.long)
    for tau in (10.0, 1.0, 0.1):
        s.grad = None
        drpo_loss(s, correct, length, group, tau=tau, l_max=8192)[0].backward()
        soft = torch.softmax(s.detach()[2:] / tau, 0)
        torch.testing.assert_close(s.grad[2:], soft)                   # loss = −J, Q = 1
        torch.testing.assert_close(s.grad[:2], -torch.tensor([0.5607, 0.4393], dtype=F64),
                                   atol=1e-4, rtol=0)


def test_skipped_groups_add_nothing_but_count_in_num_questions():
    s = torch.tensor([-1.0, -2.0, -0.5, -0.7, -3.0, -0.1], dtype=F64, requires_grad=True)
    correct = torch.tensor([True, False, True, True, False, False])
    group = torch.tensor([0, 0, 1, 1, 2, 2])                           # valid, all +, all −
    length = torch.tensor([10, 20, 30, 40, 50, 60])
    loss, m = drpo_loss(s, correct, length, group, l_max=100)
    loss.backward()
    j0 = -1.0 - 10.0 * math.log(math.exp(-2.0 / 10.0))                 # w̃ = 1, one negative
    assert loss.item() == pytest.approx(-j0 / 3)                        # |Q_all| = 3
    assert s.grad[2:].abs().sum() == 0
    assert m["drpo/valid_questions"] == 1
    assert m["drpo/pos_score"] == -1.0 and m["drpo/neg_score"] == -2.0
    loss5, _ = drpo_loss(s, correct, length, group, l_max=100, num_questions=5)
    assert loss5.item() == pytest.approx(-j0 / 5)
    # nothing valid: loss 0, zero gradient, NaN scores of skipped rows do not leak
    s2 = torch.tensor([math.nan, -1.0, -2.0], dtype=F64, requires_grad=True)
    loss, m = drpo_loss(s2, torch.tensor([True, True, False]), torch.tensor([0, 3, 4]),
                        torch.tensor([0, 0, 1]), l_max=10)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s2.grad, torch.zeros(3, dtype=F64))
    assert m["drpo/valid_questions"] == 0 and math.isnan(m["drpo/pos_score"])


def test_extreme_scores_are_stable():
    s = torch.tensor([-1e4, -5e3, -1e-3, -9e3], dtype=F64, requires_grad=True)
    correct = torch.tensor([True, False, False, False])
    loss, _ = drpo_loss(s, correct, torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long),
                        tau=0.01, l_max=10)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_kl_term_value_and_gradient():
    s, correct, length, group = random_batch(3)
    base, _ = drpo_loss(s, correct, length, group, l_max=600)
    for kl_value, beta, delta in [(0.02, 1e3, 1e-4), (5e-5, 1e3, 1e-4), (0.3, 2.0, 0.1)]:
        kl = torch.tensor(kl_value, dtype=F64, requires_grad=True)
        loss, m = drpo_loss(s, correct, length, group, l_max=600, kl_old=kl, beta=beta,
                            delta=delta)
        loss.backward()
        hinge = max(kl_value - delta, 0.0)
        assert loss.item() == pytest.approx(base.item() + beta * hinge * kl_value, rel=1e-12)
        assert kl.grad.item() == pytest.approx(beta * hinge)          # stop-gradient factor
        assert m["drpo/kl_old"] == pytest.approx(kl_value)
        ref = ref_drpo(s, correct, length, group, lam=0.1, tau=10.0, l_max=600, kl=kl.detach(),
                       beta=beta, delta=delta)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    # kl_hinge: the factor uses the given (mini-batch) value, the gradient flows through kl_old
    kl = torch.tensor(0.01, dtype=F64, requires_grad=True)
    loss, _ = drpo_loss(s, correct, length, group, l_max=600, kl_old=kl, kl_hinge=0.5,
                        beta=10.0, delta=0.1)
    loss.backward()
    assert kl.grad.item() == pytest.approx(10.0 * 0.4)
    assert loss.item() == pytest.approx(base.item() + 10.0 * 0.4 * 0.01)


def test_kl_gradient_reaches_the_log_probs():
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(6, 5, generator=g, dtype=F64)).requires_grad_(True)
    old = lp.detach() - 0.05
    mask = torch.ones(6, 5, dtype=torch.bool)
    kl = (old - lp).sum() / mask.sum()                                 # token-mean of ℓ^old − ℓ^θ
    loss, _ = drpo_loss(lp.mean(1), torch.tensor([1, 0, 1, 0, 1, 0]).bool(),
                        torch.full((6,), 5), torch.tensor([0, 0, 1, 1, 2, 2]), l_max=5,
                        kl_old=kl, beta=100.0, delta=0.0)
    loss.backward()
    assert torch.isfinite(lp.grad).all()


def test_micro_batches_with_global_normalisers_sum_to_the_whole():
    s, correct, length, group = random_batch(5, n_groups=9)
    ids = torch.unique(group)
    first = torch.isin(group, ids[:4])
    lp = s.clone().requires_grad_(True)
    whole_kl = 0.02
    whole, _ = drpo_loss(lp, correct, length, group, l_max=600,
                         kl_old=lp.sum() * 0 + torch.tensor(whole_kl, dtype=F64))
    whole.backward()
    g_whole = lp.grad.clone()
    lp.grad = None
    parts = []
    for part, share in ((first, 0.015), (~first, 0.005)):              # KL shares sum to whole
        loss, _ = drpo_loss(lp[part], correct[part], length[part], group[part], l_max=600,
                            num_questions=int(ids.numel()),
                            kl_old=torch.tensor(share, dtype=F64), kl_hinge=whole_kl)
        loss.backward()
        parts.append(loss.item())
    assert sum(parts) == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(lp.grad, g_whole)


def test_float32_scores_and_empty_call():
    s, correct, length, group = random_batch(1)
    loss32, _ = drpo_loss(s.float(), correct, length, group, l_max=600)
    loss64, _ = drpo_loss(s, correct, length, group, l_max=600)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)
    e = torch.zeros(0, dtype=F64, requires_grad=True)
    loss, m = drpo_loss(e, torch.zeros(0, dtype=torch.bool), torch.zeros(0),
                        torch.zeros(0, dtype=torch.long), l_max=10)
    assert loss.item() == 0.0 and m["drpo/valid_questions"] == 0


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def test_options_defaults_and_errors():
    assert SEQUENCE_LOSSES == ("drpo",)
    assert drpo_options() == {"lam": 0.1, "tau": 10.0, "beta": 1e3, "delta": 1e-4, "l_max": None}
    assert drpo_options(l_max=4096, beta=0)["l_max"] == 4096
    for kwargs, option in [({"lambda": 0.1}, "lambda"), ({"clip_low": 0.2}, "clip_low"),
                           ({"lam": 0}, "lam"), ({"lam": math.inf}, "lam"),
                           ({"tau": -1.0}, "tau"), ({"beta": -1.0}, "beta"),
                           ({"delta": math.nan}, "delta"), ({"l_max": 0}, "l_max"),
                           ({"tau": True}, "tau"), ({"lam": "0.1"}, "lam")]:
        with pytest.raises(ValueError, match=f"^{option}:"):
            drpo_options(**kwargs)


def test_input_errors():
    s = torch.zeros(3, dtype=F64)
    c = torch.tensor([True, False, True])
    L = torch.tensor([1, 2, 3])
    g = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="^l_max:"):
        drpo_loss(s, c, L, g, l_max=0)
    with pytest.raises(ValueError, match="^num_questions:"):
        drpo_loss(s, c, L, g, l_max=10, num_questions=1)
    with pytest.raises(ValueError, match="^group:"):
        drpo_loss(s, c, L, g.float(), l_max=10)
    with pytest.raises(ValueError, match="^correct:"):
        drpo_loss(s, torch.tensor([0.0, 0.5, 1.0]), L, g, l_max=10)
    with pytest.raises(ValueError, match="^length:"):
        drpo_loss(s, c, L[:2], g, l_max=10)
    with pytest.raises(ValueError, match="^seq_score:"):
        drpo_loss(s[None], c, L, g, l_max=10)
    with pytest.raises(ValueError, match="^kl_old:"):
        drpo_loss(s, c, L, g, l_max=10, kl_old=torch.zeros(2))
    loss, _ = drpo_loss(s, torch.tensor([1, 0, 1]), L, g, l_max=10)   # 0/1 ints accepted
    assert torch.isfinite(loss)
