"""Parity of grouprl.losses.preference with TRL 1.16 on random inputs (skipped without TRL).

TRL's DPO losses live inline in ``DPOTrainer._compute_loss``, which needs a model forward that
returns per-token ``log_probs`` (TRL's fused LM head). We run that exact method with a stub
``self`` (only the attributes it reads) and a stub model returning fixed per-token log-probs, so
the comparison covers TRL's real loss code, including its length handling for IPO and its
metrics. CPO/SimPO (``CPOTrainer.cpo_loss``) and ORPO (``ORPOTrainer.odds_ratio_loss``) are
tensor-only methods called the same way. HyPO and cDPO-in-DPOTrainer are not in TRL 1.16.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

from grouprl.losses.preference import preference_loss  # noqa: E402

CPU = torch.device("cpu")


def accelerator():
    return SimpleNamespace(device=CPU, gather_for_metrics=lambda x: x, gather=lambda x: x)


def pairs(n=8, t=12, seed=0):
    """Per-token log-probs (2n, t) laid out as TRL's [chosen; rejected] batch, with masks."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (2 * n,), generator=g)
    shift_mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
    # completion_mask: position 0 is the prompt token, then the completion tokens
    completion_mask = torch.cat([torch.zeros(2 * n, 1, dtype=torch.long), shift_mask], dim=1)
    per_token = (-3 * torch.rand(2 * n, t, generator=g, dtype=torch.float64)) * shift_mask
    ref_per_token = (per_token + 0.7 * torch.randn(2 * n, t, generator=g, dtype=torch.float64))
    ref = (ref_per_token * shift_mask).sum(1)
    return per_token.requires_grad_(), ref, completion_mask, lengths.double()


def trl_dpo(loss_type, per_token, ref, completion_mask, beta, label_smoothing=0.0):
    """Run TRL's DPOTrainer._compute_loss on fixed log-probs; returns (loss, metrics)."""
    n = per_token.shape[0] // 2
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(),
    )
    outputs = SimpleNamespace(
        log_probs=per_token, entropy=torch.zeros_like(per_token.detach()),
        mean_logits=torch.zeros_like(per_token.detach()),
        is_top1=torch.zeros(per_token.shape, dtype=torch.bool), aux_loss=None)
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:n], "ref_rejected_logps": ref[n:],
    }
    loss = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in fake._metrics["train"].items()}
    return loss, metrics


def ours(name, per_token, ref, lengths, **kw):
    n = per_token.shape[0] // 2
    logps = per_token.sum(1)
    return preference_loss(name, logps[:n], logps[n:], ref[:n], ref[n:], **kw)


def check_same(loss_a, loss_b, per_token):
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-12, abs=1e-14)
    (ga,) = torch.autograd.grad(loss_a, per_token, retain_graph=True)
    (gb,) = torch.autograd.grad(loss_b, per_token, retain_graph=True)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid(seed, beta):
    per_token, ref, cmask, lengths = pairs(seed=seed)
    t_loss, t_metrics = trl_dpo("sigmoid", per_token, ref, cmask, beta)
    o_loss, o_metrics = ours("dpo", per_token, ref, lengths, beta=beta)
    check_same(t_loss, o_loss, per_token)
    for key in METRIC_KEYS:
        assert o_metrics[key] == pytest.approx(t_metrics[key], rel=1e-6, abs=1e-12), key


def test_trl_dpo_sigmoid_ignores_label_smoothing():
    """TRL 1.16 "sigmoid" is plain DPO whatever label_smoothing is (spec §6, cDPO row)."""
    per_token, ref, cmask, lengths = pairs(seed=3)
    t_loss, _ = trl_dpo("sigmoid", per_token, ref, cmask, 0.1, label_smoothing=0.2)
    o_plain, _ = ours("dpo", per_token, ref, lengths, beta=0.1)
    o_cdpo, _ = ours("cdpo", per_token, ref, lengths, beta=0.1, label_smoothing=0.2)
    check_same(t_loss, o_plain, per_token)
    assert abs(t_loss.item() - o_cdpo.item()) > 1e-4


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust(eps):
    per_token, ref, cmask, lengths = pairs(seed=4)
    t_loss, t_metrics = trl_dpo("robust", per_token, ref, cmask, 0.2, label_smoothing=eps)
    o_loss, o_metrics = ours("robust", per_token, ref, lengths, beta=0.2, label_smoothing=eps)
    check_same(t_loss, o_loss, per_token)
    for key in METRIC_KEYS:
        assert o_metrics[key] == pytest.approx(t_metrics[key], rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_ipo_length_normalised(beta):
    per_token, ref, cmask, lengths = pairs(seed=5)
    n = per_token.shape[0] // 2
    t_loss, t_metrics = trl_dpo("ipo", per_token, ref, cmask, beta)
    o_loss, o_metrics = ours("ipo", per_token, ref, lengths, beta=beta,
                             chosen_length=lengths[:n], rejected_length=lengths[n:])
    check_same(t_loss, o_loss, per_token)
    # TRL logs the summed-log-ratio (DPO) rewards for IPO; ours are the length-normalised
    # rewards that enter the IPO loss. Their summed form equals TRL's:
    _, d_metrics = ours("dpo", per_token, ref, lengths, beta=beta)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert d_metrics[key] == pytest.approx(t_metrics[key], rel=1e-6, abs=1e-12), key


def test_length_normalised_dpo_is_trl_sigmoid_norm():
    per_token, ref, cmask, lengths = pairs(seed=6)
    n = per_token.shape[0] // 2
    t_loss, _ = trl_dpo("sigmoid_norm", per_token, ref, cmask, 0.3)
    o_loss, _ = ours("dpo", per_token, ref, lengths, beta=0.3, length_normalize=True,
                     chosen_length=lengths[:n], rejected_length=lengths[n:])
    check_same(t_loss, o_loss, per_token)


# ------------------------------------------------------------------ CPO / SimPO and ORPO


def cpo_self(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta,
                           label_smoothing=label_smoothing, simpo_gamma=simpo_gamma,
                           accelerator=accelerator())


def seq_batch(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(1, 50, (n,), generator=g).double()
    ll = torch.randint(1, 50, (n,), generator=g).double()
    pw = (-lw * 2 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_()
    pl = (-ll * 2 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_()
    return pw, pl, lw, ll


@pytest.mark.parametrize("beta, gamma, eps", [(0.1, 0.5, 0.0), (2.0, 0.5, 0.0),
                                              (2.5, 1.375, 0.1)])
def test_simpo_vs_cpo_trainer(beta, gamma, eps):
    from trl.experimental.cpo import CPOTrainer

    pw, pl, lw, ll = seq_batch(seed=7)
    # TRL's SimPO receives mean token log-probs (average_log_prob=True for "simpo")
    losses, cr, rr = CPOTrainer.cpo_loss(cpo_self("simpo", beta, eps, gamma), pw / lw, pl / ll)
    o_loss, m = preference_loss("simpo", pw, pl, beta=beta, gamma=gamma, label_smoothing=eps,
                                chosen_length=lw, rejected_length=ll)
    t_loss = losses.mean()
    assert o_loss.item() == pytest.approx(t_loss.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(o_loss, (pw, pl), retain_graph=True),
                    torch.autograd.grad(t_loss, (pw, pl), retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert m["rewards/chosen"] == pytest.approx(cr.mean().item(), rel=1e-12)
    assert m["rewards/rejected"] == pytest.approx(rr.mean().item(), rel=1e-12)
    assert m["rewards/accuracies"] == pytest.approx((cr > rr).double().mean().item())


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_cdpo_reference_free_vs_cpo_sigmoid(eps):
    """CPO "sigmoid" = reference-free DPO with label smoothing = our cdpo with Λ_ref = 0."""
    from trl.experimental.cpo import CPOTrainer

    pw, pl, _, _ = seq_batch(seed=8)
    losses, _, _ = CPOTrainer.cpo_loss(cpo_self("sigmoid", 0.1, eps), pw, pl)
    zero = torch.zeros_like(pw.detach())
    o_loss, _ = preference_loss("cdpo", pw, pl, zero, zero, beta=0.1, label_smoothing=eps)
    assert o_loss.item() == pytest.approx(losses.mean().item(), rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.05])
def test_orpo_vs_orpo_trainer(beta):
    from trl.experimental.orpo import ORPOTrainer

    pw, pl, lw, ll = seq_batch(seed=9)
    nll = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    losses, cr, rr, log_odds_ratio, log_odds_chosen = ORPOTrainer.odds_ratio_loss(
        SimpleNamespace(beta=beta, accelerator=accelerator()), pw / lw, pl / ll)
    t_loss = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
    o_loss, m = preference_loss("orpo", pw, pl, beta=beta, chosen_length=lw, rejected_length=ll,
                                nll_loss=nll)
    # TRL casts the mean log-probs to fp32 inside odds_ratio_loss: fp32 tolerance
    tol = dict(rel=1e-6, abs=1e-9)
    assert o_loss.item() == pytest.approx(t_loss.item(), **tol)
    for a, b in zip(torch.autograd.grad(o_loss, (pw, pl, nll), retain_graph=True),
                    torch.autograd.grad(t_loss, (pw, pl, nll), retain_graph=True)):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=1e-9)
    assert m["log_odds_ratio"] == pytest.approx(log_odds_ratio.item(), **tol)
    assert m["log_odds_chosen"] == pytest.approx(log_odds_chosen.item(), **tol)
    assert m["rewards/chosen"] == pytest.approx(cr.mean().item(), **tol)
    assert m["rewards/rejected"] == pytest.approx(rr.mean().item(), **tol)


# ------------------------------------------------------------------- token log-probs / entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_vs_trl(dtype, temperature):
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    from grouprl.losses.logprobs import token_logprobs

    g = torch.Generator().manual_seed(10)
    logits = (3 * torch.randn(3, 9, 40, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, 40, (3, 9), generator=g)
    w = torch.randn(3, 9, generator=g)
    t_lp, t_ent = selective_log_softmax_and_entropy(logits, labels, temperature=temperature)
    o_lp, o_ent = token_logprobs(logits, labels, temperature=temperature, with_entropy=True,
                                 chunk_size=5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(o_lp, t_lp.float(), **tol)
    torch.testing.assert_close(o_ent, t_ent.float(), **tol)
    t_only = selective_log_softmax(logits, labels, temperature=temperature)
    torch.testing.assert_close(o_lp, t_only.float(), **tol)
    (g_o,) = torch.autograd.grad((o_lp * w).sum() + (o_ent * w).sum(), logits)
    (g_t,) = torch.autograd.grad((t_lp.float() * w).sum() + (t_ent.float() * w).sum(), logits)
    torch.testing.assert_close(g_o.float(), g_t.float(), **tol)
