"""Spec §4.4 check 1 (and 5): the auxiliary-head math value by value, in float64, against the
spec's worked numbers (rounded to 6 decimals there), plus the decision signals, z(x) selection
and γ = 0."""

from __future__ import annotations

import pytest
import torch

from grouprl.presafe import (
    AuxHead,
    aux_bce,
    aux_kl,
    aux_loss,
    binary_entropy,
    decision_signal,
    joint_loss,
    last_prompt_state,
    refusal_probability,
    two_class_ce,
    two_class_kl,
)

F64 = torch.float64
BERT_LOGITS = torch.tensor([-0.5, 1.5], dtype=F64)
Z = [0.5, -1.0, 2.0, 0.0]
W = [0.2, -0.1, 0.3, 0.5]
B = -0.2


def _head() -> AuxHead:
    head = AuxHead(4).double()
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([W], dtype=F64))
        head.linear.bias.fill_(B)
    return head


def _d() -> torch.Tensor:
    return refusal_probability(BERT_LOGITS).reshape(1)


def test_signal_from_bert_logits():
    assert float(_d()) == pytest.approx(0.880797, abs=5e-7)
    assert float(decision_signal(BERT_LOGITS, "hard")) == 1.0
    assert float(decision_signal(BERT_LOGITS, "soft")) == float(_d())
    assert float(decision_signal(-BERT_LOGITS, "hard")) == 0.0
    with pytest.raises(ValueError, match="signal"):
        decision_signal(BERT_LOGITS, "medium")
    with pytest.raises(ValueError, match="last dimension of 2"):
        refusal_probability(torch.zeros(3))


def test_head_logit_and_probability():
    z = torch.tensor([Z], dtype=F64)
    logit = _head()(z).detach()
    assert logit.shape == (1,) and logit.dtype == F64
    assert float(logit) == pytest.approx(0.6, abs=1e-12)
    assert float(torch.sigmoid(logit)) == pytest.approx(0.645656, abs=5e-7)
    assert AuxHead(4)(z.to(torch.bfloat16)).dtype == torch.float32   # z cast to the head's


def test_bce_soft_hard_and_gradients():
    head = _head()
    z = torch.tensor([Z], dtype=F64, requires_grad=True)
    logit = head.linear(z)[:, 0]
    logit.retain_grad()
    loss = aux_bce(logit, _d())
    assert float(loss.detach()) == pytest.approx(0.509010, abs=5e-7)
    assert float(aux_bce(logit.detach(), torch.ones(1, dtype=F64))) == pytest.approx(
        0.437488, abs=5e-7)
    loss.backward()
    assert float(logit.grad) == pytest.approx(-0.235141, abs=5e-7)           # σ − d
    expected = [-0.047028, 0.023514, -0.070542, -0.117570]                     # (σ − d)·w
    assert z.grad[0].tolist() == pytest.approx(expected, abs=5e-7)
    sigma = torch.sigmoid(logit.detach())
    assert float(logit.grad) == pytest.approx(float(sigma - _d()), abs=1e-15)


def test_two_class_forms_and_kl():
    head_logits = torch.tensor([[0.1, 0.7]], dtype=F64)
    d = _d()
    assert float(two_class_ce(head_logits, d)) == pytest.approx(0.509010, abs=5e-7)
    assert float(two_class_kl(head_logits, d)) == pytest.approx(0.143676, abs=5e-7)
    logit = torch.tensor([0.6], dtype=F64)                     # h_refuse − h_comply
    assert float(two_class_ce(head_logits, d)) == pytest.approx(float(aux_bce(logit, d)),
                                                                abs=1e-12)
    assert float(aux_kl(logit, d)) == pytest.approx(0.143676, abs=5e-7)
    assert float(aux_loss("kl", logit, d)) == float(aux_kl(logit, d))
    assert float(binary_entropy(torch.tensor([0.0, 1.0], dtype=F64)).sum()) == 0.0
    # KL and BCE have the same gradient in the logit
    a = logit.clone().requires_grad_(True)
    b = logit.clone().requires_grad_(True)
    aux_bce(a, d).backward()
    aux_kl(b, d).backward()
    assert float(a.grad) == pytest.approx(float(b.grad), abs=1e-15)


def test_joint_loss_and_gamma_zero_is_bitwise_sft():
    l_sft = torch.tensor(1.2345, dtype=F64)
    l_aux = torch.tensor(0.5090097036991562, dtype=F64)
    assert float(joint_loss(l_sft, l_aux, 0.5)) == pytest.approx(1.489005, abs=5e-7)
    for value in (1.2345, 0.1 + 0.2, 3.0e-8):                   # check 5: bitwise
        sft = torch.tensor(value, dtype=torch.float32)
        out = joint_loss(sft, torch.tensor(0.77), 0.0)
        assert out is sft and out.item() == sft.item()
    with pytest.raises(ValueError, match="aux_weight"):
        joint_loss(l_sft, l_aux, -0.1)


def test_last_prompt_state_layer_and_pooling():
    states = tuple(torch.arange(2 * 5 * 3, dtype=F64).reshape(2, 5, 3) + 100 * k
                   for k in range(4))                          # embeddings + 3 layers
    z = last_prompt_state(states, 3)
    assert torch.equal(z, states[-1][:, 2])
    assert torch.equal(last_prompt_state(states, 3, layer=1), states[1][:, 2])
    pooled = last_prompt_state(states, 5, layer=-1, pool_layers=2)
    assert torch.equal(pooled, (states[2][:, 4] + states[3][:, 4]) / 2)
    with pytest.raises(ValueError, match="aux_layer"):
        last_prompt_state(states, 3, layer=4)
    with pytest.raises(ValueError, match="aux_pool_layers"):
        last_prompt_state(states, 3, layer=1, pool_layers=3)


def test_head_init_is_seeded_and_leaves_the_global_rng():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a, b = AuxHead(8, seed=3), AuxHead(8, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert not torch.equal(a.linear.weight, AuxHead(8, seed=4).linear.weight)
