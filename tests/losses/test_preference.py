"""Preference losses (spec-losses §6) against per-pair formulas written out with Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.losses.preference import (
    PREFERENCE_ALIASES,
    PREFERENCE_LOSSES,
    canonical_preference_loss,
    log1mexp,
    preference_loss,
)


def logsig(x: float) -> float:
    """log σ(x) = −log(1 + e^{−x}), evaluated stably in Python."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def batch(n=16, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(3, 40, (n,), generator=g).double()
    ll = torch.randint(3, 40, (n,), generator=g).double()
    pw = -lw * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    pl = -ll * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    rw = pw.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 3
    rl = pl.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 3
    if requires_grad:
        pw.requires_grad_()
        pl.requires_grad_()
    return pw, pl, rw, rl, lw, ll


def mean(xs):
    return sum(xs) / len(xs)


def rows(*tensors):
    return list(zip(*(t.detach().tolist() for t in tensors)))


def grad_of(loss, *xs):
    return torch.autograd.grad(loss, xs, allow_unused=True)


# ----------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (1.0, 0.4)])
def test_dpo_and_cdpo_formula(beta, eps):
    pw, pl, rw, rl, _, _ = batch()
    expected = mean([-(1 - eps) * logsig(beta * ((a - c) - (b - d)))
                     - eps * logsig(-beta * ((a - c) - (b - d)))
                     for a, b, c, d in rows(pw, pl, rw, rl)])
    for name in ("dpo", "cdpo"):
        loss, _ = preference_loss(name, pw, pl, rw, rl, beta=beta, label_smoothing=eps)
        assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_robust_formula():
    pw, pl, rw, rl, _, _ = batch(seed=1)
    beta, eps = 0.2, 0.15
    expected = mean([(-(1 - eps) * logsig(beta * h) + eps * logsig(-beta * h)) / (1 - 2 * eps)
                     for h in [(a - c) - (b - d) for a, b, c, d in rows(pw, pl, rw, rl)]])
    loss, _ = preference_loss("robust", pw, pl, rw, rl, beta=beta, label_smoothing=eps)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_ipo_length_normalised_and_summed():
    pw, pl, rw, rl, lw, ll = batch(seed=2)
    beta = 0.3
    expected = mean([((a - c) / x - (b - d) / y - 1 / (2 * beta)) ** 2
                     for a, b, c, d, x, y in rows(pw, pl, rw, rl, lw, ll)])
    loss, _ = preference_loss("ipo", pw, pl, rw, rl, beta=beta, chosen_length=lw,
                              rejected_length=ll)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    expected_sum = mean([((a - c) - (b - d) - 1 / (2 * beta)) ** 2
                         for a, b, c, d in rows(pw, pl, rw, rl)])
    loss, _ = preference_loss("ipo", pw, pl, rw, rl, beta=beta, length_normalize=False)
    assert loss.item() == pytest.approx(expected_sum, rel=1e-12)


@pytest.mark.parametrize("beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (0.1, 0.5, 0.1)])
def test_simpo_formula(beta, gamma, eps):
    pw, pl, _, _, lw, ll = batch(seed=3)
    expected = mean([-(1 - eps) * logsig(beta / x * a - beta / y * b - gamma)
                     - eps * logsig(-(beta / x * a - beta / y * b - gamma))
                     for a, b, x, y in rows(pw, pl, lw, ll)])
    loss, _ = preference_loss("simpo", pw, pl, beta=beta, gamma=gamma, label_smoothing=eps,
                              chosen_length=lw, rejected_length=ll)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_simpo_defaults_are_the_released_code_values():
    pw, pl, _, _, lw, ll = batch(seed=4)
    expected = mean([-logsig(2.0 / x * a - 2.0 / y * b - 0.5) for a, b, x, y in
                     rows(pw, pl, lw, ll)])
    loss, _ = preference_loss("simpo", pw, pl, chosen_length=lw, rejected_length=ll)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # γ follows β through gamma_beta_ratio = 0.25 when not given
    expected = mean([-logsig(4.0 / x * a - 4.0 / y * b - 1.0) for a, b, x, y in
                     rows(pw, pl, lw, ll)])
    loss, _ = preference_loss("simpo", pw, pl, beta=4.0, chosen_length=lw, rejected_length=ll)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_orpo_formula_and_nll():
    pw, pl, _, _, lw, ll = batch(seed=5)
    lam = 0.25

    def lo(m):  # log odds of the mean token log-prob m: m − log(1 − e^m)
        return m - math.log(1 - math.exp(m))

    ratios = [logsig(lo(a / x) - lo(b / y)) for a, b, x, y in rows(pw, pl, lw, ll)]
    nll = -sum(pw.tolist()) / sum(lw.tolist())
    loss, metrics = preference_loss("orpo", pw, pl, beta=lam, chosen_length=lw,
                                    rejected_length=ll)
    assert loss.item() == pytest.approx(nll - lam * mean(ratios), rel=1e-12)
    assert metrics["nll_loss"] == pytest.approx(nll, rel=1e-12)
    assert metrics["log_odds_ratio"] == pytest.approx(mean(ratios), rel=1e-12)
    logodds = [lo(a / x) - lo(b / y) for a, b, x, y in rows(pw, pl, lw, ll)]
    assert metrics["log_odds_chosen"] == pytest.approx(mean(logodds), rel=1e-12)
    # a caller-provided NLL (e.g. over prompt + response, as TRL) is used as is, with gradient
    given = torch.tensor(1.234, dtype=torch.float64, requires_grad=True)
    loss, _ = preference_loss("orpo", pw, pl, beta=lam, chosen_length=lw, rejected_length=ll,
                              nll_loss=given)
    assert loss.item() == pytest.approx(1.234 - lam * mean(ratios), rel=1e-12)
    (g,) = torch.autograd.grad(loss, given)
    assert g.item() == 1.0


def test_log1mexp_stable_on_both_branches():
    x = torch.tensor([-1e-12, -1e-5, -0.5, -math.log(2), -0.9, -5.0, -50.0, -800.0],
                     dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) if v > -math.log(2) else math.log1p(-math.exp(v))
                for v in x.tolist()]
    torch.testing.assert_close(log1mexp(x), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert torch.all(torch.isfinite(log1mexp(x.float())))


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_hypo_formula(gamma):
    pw, pl, rw, rl, _, _ = batch(seed=6)
    beta = 0.1
    expected = mean([-logsig(beta * ((a - b) - max(0.0, c - d)) - gamma)
                     for a, b, c, d in rows(pw, pl, rw, rl)])
    loss, _ = preference_loss("hypo", pw, pl, rw, rl, beta=beta, gamma=gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_hypo_length_normalised():
    pw, pl, rw, rl, lw, ll = batch(seed=7)
    expected = mean([-logsig(0.1 * ((a / x - b / y) - max(0.0, c / x - d / y)))
                     for a, b, c, d, x, y in rows(pw, pl, rw, rl, lw, ll)])
    loss, _ = preference_loss("hypo", pw, pl, rw, rl, length_normalize=True, chosen_length=lw,
                              rejected_length=ll)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------- identities


def test_dpo_equals_cdpo_eps0_equals_robust_eps0_value_and_gradient():
    pw, pl, rw, rl, _, _ = batch(seed=8)
    ref_loss, _ = preference_loss("dpo", pw, pl, rw, rl)
    ref_grad = grad_of(ref_loss, pw, pl)
    for name, kw in (("cdpo", dict(label_smoothing=0.0)), ("robust", dict(label_smoothing=0.0)),
                     ("sigmoid", {})):
        loss, _ = preference_loss(name, pw, pl, rw, rl, **kw)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-14)
        for a, b in zip(grad_of(loss, pw, pl), ref_grad):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)


def test_dpo_label_smoothing_is_cdpo_and_cdpo_default_eps():
    pw, pl, rw, rl, _, _ = batch(seed=9)
    a, _ = preference_loss("dpo", pw, pl, rw, rl, label_smoothing=0.1)
    b, _ = preference_loss("cdpo", pw, pl, rw, rl)
    c, _ = preference_loss("dpo", pw, pl, rw, rl)
    assert a.item() == b.item() and a.item() != c.item()


def test_hypo_equals_dpo_when_reference_not_pessimistic():
    pw, pl, rw, rl, _, _ = batch(seed=10)
    rw = torch.maximum(rw, rl + 0.01)  # Δ_ref > 0 everywhere
    rw[0] = rl[0]  # and one pair with Δ_ref = 0 exactly
    h_loss, h_metrics = preference_loss("hypo", pw, pl, rw, rl, beta=0.2)
    d_loss, d_metrics = preference_loss("dpo", pw, pl, rw, rl, beta=0.2)
    assert h_loss.item() == pytest.approx(d_loss.item(), rel=1e-14)
    for a, b in zip(grad_of(h_loss, pw, pl), grad_of(d_loss, pw, pl)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)
    assert h_metrics["hypo/pessimistic_frac"] == 0.0
    for key in d_metrics:
        if key != "loss":
            assert h_metrics[key] == pytest.approx(d_metrics[key], rel=1e-14)


def test_hypo_is_reference_free_when_reference_pessimistic():
    pw, pl, rw, rl, _, _ = batch(seed=11)
    rw = torch.minimum(rw, rl - 0.01)  # Δ_ref < 0 everywhere
    h_loss, h_metrics = preference_loss("hypo", pw, pl, rw, rl, beta=0.2)
    zero = torch.zeros_like(rw)
    f_loss, _ = preference_loss("dpo", pw, pl, zero, zero, beta=0.2)  # DPO with ref terms 0
    assert h_loss.item() == pytest.approx(f_loss.item(), rel=1e-14)
    for a, b in zip(grad_of(h_loss, pw, pl), grad_of(f_loss, pw, pl)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)
    assert h_metrics["hypo/pessimistic_frac"] == 1.0


def test_hypo_mixed_batch_and_gradient_weight_never_smaller():
    pw, pl, rw, rl, _, _ = batch(n=40, seed=12)
    pess = (rw - rl) < 0
    assert 0 < int(pess.sum()) < 40
    h_loss, metrics = preference_loss("hypo", pw, pl, rw, rl)
    d_loss, _ = preference_loss("dpo", pw, pl, rw, rl)
    zero = torch.zeros_like(rw)
    f_loss, _ = preference_loss("dpo", pw, pl, zero, zero)
    # per-pair: HyPO = DPO on Δ_ref ≥ 0, reference-free on Δ_ref < 0 (the mean mixes them)
    gh = grad_of(h_loss, pw)[0]
    gd = grad_of(d_loss, pw)[0]
    gf = grad_of(f_loss, pw)[0]
    torch.testing.assert_close(gh, torch.where(pess, gf, gd), rtol=1e-14, atol=1e-16)
    assert metrics["hypo/pessimistic_frac"] == pytest.approx(pess.double().mean().item())
    # gradient weight σ(−βΔ_θ) ≥ σ(−βh) on pessimistic pairs (the loss pushes Δ_θ up harder)
    assert torch.all(gh[pess].abs() >= gd[pess].abs())


def test_reference_is_detached_and_policy_gets_gradient():
    pw, pl, rw, rl, lw, ll = batch(seed=13)
    rw.requires_grad_()
    rl.requires_grad_()
    for name in ("dpo", "cdpo", "robust", "ipo", "hypo"):
        kw = dict(chosen_length=lw, rejected_length=ll) if name == "ipo" else {}
        loss, _ = preference_loss(name, pw, pl, rw, rl, **kw)
        g_pw, g_pl, g_rw, g_rl = grad_of(loss, pw, pl, rw, rl)
        assert g_rw is None and g_rl is None
        assert torch.all(torch.isfinite(g_pw)) and torch.all(torch.isfinite(g_pl))
        if name != "ipo":  # sigmoid losses always push chosen up and rejected down
            assert torch.all(g_pw < 0) and torch.all(g_pl > 0)


def test_dpo_gradient_formula():
    """∂/∂Λ_w of mean −logσ(βh) = −β σ(−βh) / N."""
    pw, pl, rw, rl, _, _ = batch(n=5, seed=14)
    loss, _ = preference_loss("dpo", pw, pl, rw, rl, beta=0.3)
    (g,) = grad_of(loss, pw)
    expected = [-0.3 / (1 + math.exp(0.3 * ((a - c) - (b - d)))) / 5
                for a, b, c, d in rows(pw, pl, rw, rl)]
    torch.testing.assert_close(g, torch.tensor(expected, dtype=torch.float64), rtol=1e-12,
                               atol=0)


def test_half_precision_inputs_are_upcast():
    pw, pl, rw, rl, _, _ = batch(seed=15, requires_grad=False)
    loss16, _ = preference_loss("dpo", pw.bfloat16(), pl.bfloat16(), rw.bfloat16(),
                                rl.bfloat16())
    loss32, _ = preference_loss("dpo", pw.bfloat16().float(), pl.bfloat16().float(),
                                rw.bfloat16().float(), rl.bfloat16().float())
    assert loss16.dtype == torch.float32 and loss16.item() == loss32.item()


def test_extreme_logits_are_finite():
    pw = torch.tensor([-1e4, -1.0], requires_grad=True)
    pl = torch.tensor([-1.0, -1e4], requires_grad=True)
    zero = torch.zeros(2)
    loss, _ = preference_loss("dpo", pw, pl, zero, zero, beta=1.0)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx((1e4 - 1) / 2, rel=1e-6)
    assert all(torch.all(torch.isfinite(g)) for g in grad_of(loss, pw, pl))


# ------------------------------------------------------------------------------- metrics


def test_metrics_values_by_hand():
    pw = torch.tensor([-10.0, -20.0, -5.0, -8.0])
    pl = torch.tensor([-12.0, -15.0, -5.0, -9.0])
    rw = torch.tensor([-11.0, -18.0, -6.0, -8.0])
    rl = torch.tensor([-11.0, -18.0, -4.0, -9.0])
    beta = 0.5
    loss, m = preference_loss("dpo", pw, pl, rw, rl, beta=beta)
    # β(Λ−Λ_ref): chosen [0.5, −1, 0.5, 0], rejected [−0.5, 1.5, −0.5, 0]
    assert m["rewards/chosen"] == pytest.approx(0.0)
    assert m["rewards/rejected"] == pytest.approx(0.125)
    assert m["rewards/margins"] == pytest.approx(-0.125)
    assert m["rewards/accuracies"] == pytest.approx(0.5)  # 1 0 1 0 (the tie counts as wrong)
    assert m["logps/chosen"] == pytest.approx(-10.75)
    assert m["logps/rejected"] == pytest.approx(-10.25)
    assert m["loss"] == pytest.approx(loss.item())
    assert all(isinstance(v, float) for v in m.values())
    # HyPO: Δ_ref = [0, 0, −2, 1] → one pessimistic pair of four; DPO rewards are reported
    _, mh = preference_loss("hypo", pw, pl, rw, rl, beta=beta)
    assert mh["hypo/pessimistic_frac"] == pytest.approx(0.25)
    assert mh["rewards/margins"] == pytest.approx(-0.125)
    # SimPO: rewards are β·Λ/L
    _, ms = preference_loss("simpo", pw, pl, beta=2.0, chosen_length=torch.tensor([5.0] * 4),
                            rejected_length=torch.tensor([2.0] * 4))
    assert ms["rewards/chosen"] == pytest.approx(2.0 * -10.75 / 5)
    assert ms["rewards/rejected"] == pytest.approx(2.0 * -10.25 / 2)
    assert ms["rewards/accuracies"] == pytest.approx(1.0)


def test_ipo_metrics_use_length_normalised_rewards():
    pw, pl, rw, rl, lw, ll = batch(seed=16)
    _, m = preference_loss("ipo", pw, pl, rw, rl, beta=0.1, chosen_length=lw,
                           rejected_length=ll)
    expected = mean([0.1 * (a - c) / x for a, c, x in rows(pw, rw, lw)])
    assert m["rewards/chosen"] == pytest.approx(expected, rel=1e-12)


def test_zero_lengths_are_clamped_to_one():
    pw, pl, rw, rl, _, _ = batch(n=3, seed=17)
    zero = torch.zeros(3, dtype=torch.float64)
    a, _ = preference_loss("ipo", pw, pl, rw, rl, chosen_length=zero, rejected_length=0)
    b, _ = preference_loss("ipo", pw, pl, rw, rl, length_normalize=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-14)


# -------------------------------------------------------------------------------- errors


def test_registry_and_aliases():
    assert set(PREFERENCE_LOSSES) == {"dpo", "cdpo", "robust", "ipo", "simpo", "orpo", "hypo"}
    for alias, target in PREFERENCE_ALIASES.items():
        assert canonical_preference_loss(alias) == target
    assert canonical_preference_loss(" DPO ") == "dpo"


def test_errors_name_the_argument():
    pw, pl, rw, rl, lw, ll = batch(n=4, seed=18)
    cases = [
        (dict(name="kto"), "name: unknown preference loss 'kto'.*'dpo'"),
        (dict(name="dpo", ref=False), "ref_chosen_logp: required by 'dpo'"),
        (dict(name="hypo", ref=False), "ref_chosen_logp: required by 'hypo'"),
        (dict(name="simpo", lengths=True), "ref_chosen_logp: not used by 'simpo'"),
        (dict(name="ipo"), "chosen_length: required by 'ipo'"),
        (dict(name="simpo", ref=False), "chosen_length: required by 'simpo'"),
        (dict(name="dpo", gamma=0.5), "gamma: unknown option for preference loss 'dpo'; "
                                      "accepted options: beta, label_smoothing, "
                                      "length_normalize$"),
        (dict(name="ipo", label_smoothing=0.1, lengths=True),
         "label_smoothing: unknown option for preference loss 'ipo'"),
        (dict(name="dpo", lengths=True), "chosen_length: not used by 'dpo'"),
        (dict(name="robust", label_smoothing=0.5), "label_smoothing.*robust"),
        (dict(name="dpo", label_smoothing=-0.1), "label_smoothing"),
        (dict(name="dpo", beta=0.0), "beta"),
        (dict(name="dpo", beta=float("inf")), "beta"),
        (dict(name="hypo", length_normalize="yes"), "length_normalize"),
        (dict(name="dpo", nll_loss=torch.tensor(1.0)),
         "nll_loss: unknown option for preference loss 'dpo'"),
    ]
    for kw, match in cases:
        name = kw.pop("name")
        with_ref = kw.pop("ref", True)
        lengths = kw.pop("lengths", False)
        refs = (rw, rl) if with_ref else (None, None)
        extra = dict(chosen_length=lw, rejected_length=ll) if lengths else {}
        with pytest.raises(ValueError, match=match):
            preference_loss(name, pw, pl, *refs, **kw, **extra)
    with pytest.raises(ValueError, match="rejected_logp: shape"):
        preference_loss("dpo", pw, pl[:3], rw, rl)
    with pytest.raises(ValueError, match="ref_rejected_logp: expected shape"):
        preference_loss("dpo", pw, pl, rw, rl[:3])
    with pytest.raises(ValueError, match="chosen_logp: expected a non-empty 1-D"):
        preference_loss("dpo", pw[:0], pl[:0], rw[:0], rl[:0])
    with pytest.raises(ValueError, match="chosen_length: token counts"):
        preference_loss("ipo", pw, pl, rw, rl, chosen_length=-lw, rejected_length=ll)
    with pytest.raises(ValueError, match="nll_loss: expected a scalar"):
        preference_loss("orpo", pw, pl, chosen_length=lw, rejected_length=ll,
                        nll_loss=torch.ones(2))
