"""Spec-seed-systems §3.5 checks 1–6, value by value: routing and temperature, router PG term,
switching penalty, load balance, temperature schedule, joint ratio; plus hysteresis details."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.losses.ratios import token_log_ratio
from grouprl.moe import (
    apply_hysteresis,
    assign_experts,
    expert_log_prob,
    hysteresis_distribution,
    joint_logprob,
    joint_token_logprobs,
    load_balance_loss,
    router_aux_loss,
    router_pg_loss,
    routing_probs,
    routing_weights,
    switching_penalty,
    temperature_at,
    transitions,
)

Z = torch.tensor([[2.0, 0.0], [1.5, 0.5], [-1.0, 1.0]], dtype=torch.float64)
Q1 = torch.tensor([[0.880797, 0.119203], [0.731059, 0.268941], [0.119203, 0.880797]],
                  dtype=torch.float64)
ONE_TRAJ = torch.zeros(3, dtype=torch.long)
STEPS = torch.arange(3)


def _walk(q: torch.Tensor, margin: float, greedy: bool = True) -> list[int]:
    """Assign the rows of one trajectory step by step (e_{t−1} fed back)."""
    prev, out = torch.tensor([-1]), []
    for t in range(q.shape[0]):
        prev = assign_experts(q[t:t + 1], prev, margin, greedy=greedy)
        out.append(int(prev))
    return out


def test_check1_routing_probabilities_at_two_temperatures():
    assert torch.allclose(routing_probs(Z, 1.0), Q1, atol=1e-6)
    q_half = torch.tensor([[0.982014, 0.017986], [0.880797, 0.119203], [0.017986, 0.982014]],
                          dtype=torch.float64)
    assert torch.allclose(routing_probs(Z, 0.5), q_half, atol=1e-6)


def test_check1_argmax_and_hysteresis_assignment():
    q = routing_probs(Z, 1.0)
    assert q.argmax(-1).tolist() == [0, 0, 1]
    assert _walk(q, 0.2) == [0, 0, 1]                 # 0.880797 − 0.119203 > 0.2: switch


def test_hysteresis_keeps_the_expert_when_the_margin_is_not_beaten():
    q = torch.tensor([[0.7, 0.3], [0.45, 0.55], [0.35, 0.65], [0.39, 0.61]])
    assert _walk(q, 0.2) == [0, 0, 1, 1]               # 0.1 ≤ δ keeps 0; 0.3 > δ switches
    assert _walk(q, 0.0) == [0, 1, 1, 1]
    prev = torch.tensor([0, 0])
    assert apply_hysteresis(q[1:3], prev, torch.tensor([1, 1]), 0.2).tolist() == [0, 1]


def test_hysteresis_distribution_is_the_law_of_sample_then_keep():
    q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64)
    prev = torch.tensor([0, 0, -1])
    p = hysteresis_distribution(q, prev, 0.2)
    # row 0: nothing beats 0.5 by > 0.2 → all mass on 0; row 1: 0.6 − 0.1 > 0.2 switches to 1,
    # 0.3 − 0.1 = 0.2 does not → 0 keeps 0.1 + 0.3; row 2: first step, p = q
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [0.2, 0.3, 0.5]],
                            dtype=torch.float64)
    assert torch.allclose(p, expected)
    # Monte-Carlo: the sampled assignment follows p
    gen = torch.Generator().manual_seed(0)
    rows = q[1:2].expand(20000, 3)
    picks = assign_experts(rows, torch.zeros(20000, dtype=torch.long), 0.2, generator=gen)
    freq = torch.bincount(picks, minlength=3).double() / 20000
    assert torch.allclose(freq, expected[1], atol=0.015)
    logp = expert_log_prob(q, torch.tensor([0, 1, 2]), kind="hysteresis", previous=prev)
    assert torch.allclose(logp, torch.log(torch.tensor([1.0, 0.6, 0.5], dtype=torch.float64)))


def test_check2_router_policy_gradient_term():
    q = routing_probs(Z, 1.0)
    logq = expert_log_prob(q, torch.tensor([0, 0, 1]))
    loss = router_pg_loss(logq, torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64))
    assert float(loss) == pytest.approx(0.0310556, abs=1e-7)
    slow = -sum(a * math.log(float(Q1[i, e]))
                for i, (a, e) in enumerate([(0.5, 0), (0.5, 0), (-1.0, 1)])) / 3
    assert float(loss) == pytest.approx(slow, abs=1e-6)


def test_check3_switching_penalty_both_forms():
    q = routing_probs(Z, 1.0)
    tv = switching_penalty(q, ONE_TRAJ, STEPS, "tv")
    assert float(tv) == pytest.approx((0.149739 + 0.611856) / 2, abs=1e-6)
    assert float(0.1 * tv) == pytest.approx(0.0380797, abs=1e-7)
    overlap = switching_penalty(q, ONE_TRAJ, STEPS, "overlap")
    assert float(overlap) == pytest.approx((0.324027 + 0.675973) / 2, abs=1e-6)
    # each transition separately
    assert float(switching_penalty(q[:2], ONE_TRAJ[:2], STEPS[:2], "overlap")) == \
        pytest.approx(0.324027, abs=1e-6)
    assert float(switching_penalty(q[1:], ONE_TRAJ[1:], STEPS[1:], "tv")) == \
        pytest.approx(0.611856, abs=1e-6)


def test_switching_pairs_only_consecutive_steps_of_one_trajectory():
    traj = torch.tensor([1, 0, 1, 0, 0])
    step = torch.tensor([0, 2, 1, 0, 5])                 # traj 0: steps 0, 2, 5 (no t−1 → t)
    before, after = transitions(traj, step)
    assert list(zip(before.tolist(), after.tolist())) == [(0, 2)]
    q = torch.rand(5, 3)
    assert float(switching_penalty(q, traj, step)) == \
        pytest.approx(0.5 * float((q[2] - q[0]).abs().sum()), rel=1e-6)
    assert float(switching_penalty(q[:1], traj[:1], step[:1])) == 0.0


def test_check4_load_balance():
    q = routing_probs(Z, 1.0)
    assert torch.allclose(q.mean(0), torch.tensor([0.577020, 0.422980], dtype=torch.float64),
                          atol=1e-6)
    lb = load_balance_loss(q)
    assert float(lb) == pytest.approx(0.00593201, abs=1e-8)
    total, metrics = router_aux_loss(q, ONE_TRAJ, STEPS)
    assert float(total) == pytest.approx(0.0380797 + 5.932e-5, abs=1e-7)
    assert metrics["router/load_balance"] == pytest.approx(0.00593201, abs=1e-8)


def test_check5_temperature_schedule():
    got = [temperature_at(k) for k in (0, 10, 20, 44, 45)]
    assert got == pytest.approx([1.0, 0.5987, 0.3585, 0.1047, 0.1], abs=1e-4)
    assert temperature_at(45) == 0.1 and temperature_at(1000) == 0.1


def test_check6_joint_ratio():
    tok = torch.tensor([[-0.5, -1.2, -0.3, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    old_e = torch.log(torch.tensor([0.880797, 0.5]))
    new_e = torch.log(torch.tensor([0.9, 0.5]))
    ratios = {}
    for placement in ("broadcast", "first"):
        delta = token_log_ratio(joint_token_logprobs(tok, mask, new_e, placement),
                                joint_token_logprobs(tok, mask, old_e, placement), mask)
        ratios[placement] = torch.exp(delta)
        assert float(ratios[placement][0, 0]) == pytest.approx(0.9 / 0.880797, abs=1e-5)
        assert float(ratios[placement][0, 0]) == pytest.approx(1.0218, abs=1e-4)
        assert torch.allclose(ratios[placement][1], torch.ones(4))   # same expert prob
        assert float(ratios[placement][0, 3]) == 1.0                   # padding: δ = 0
    # broadcast: every response token's ratio is the joint one (token-level PPO sees it per
    # token; GSPO's length-normalised ratio exp(mean δ) is it too)
    assert torch.allclose(ratios["broadcast"][0, :3], torch.full((3,), 0.9 / 0.880797))
    # first: only the first token carries it; the summed (sequence) ratio is the joint ratio
    assert torch.allclose(ratios["first"][0, 1:3], torch.ones(2))
    assert float(ratios["first"][0].prod()) == pytest.approx(0.9 / 0.880797, rel=1e-6)
    old_joint, new_joint = joint_logprob(tok, mask, old_e), joint_logprob(tok, mask, new_e)
    assert float(torch.exp(new_joint - old_joint)[0]) == pytest.approx(1.0218, abs=1e-4)
    assert torch.allclose(new_joint, torch.tensor([-2.0, -2.0]) + new_e)


def test_joint_first_placement_skips_rows_padding_and_keeps_gradient_to_the_router():
    tok = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    z = torch.zeros(2, 2, requires_grad=True)
    logq = expert_log_prob(torch.softmax(z, -1), torch.tensor([0, 1]))
    out = joint_token_logprobs(tok, mask, logq, "first")
    assert torch.allclose(out.detach(), torch.tensor([[math.log(0.5), 0, 0],
                                                      [math.log(0.5), 0, 0]]))
    out.sum().backward()
    assert torch.allclose(z.grad, torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))


def test_routing_weights_modes():
    q = torch.tensor([[0.7, 0.3], [0.2, 0.8]], requires_grad=True)
    e = torch.tensor([0, 1])
    hard = routing_weights(q, e, "joint")
    assert hard.tolist() == [[1.0, 0.0], [0.0, 1.0]] and not hard.requires_grad
    st = routing_weights(q, e, "straight_through")
    assert torch.allclose(st.detach(), hard)
    (st * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert torch.allclose(q.grad, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert routing_weights(q, e, "soft") is q


@pytest.mark.parametrize("call, name", [
    (lambda: temperature_at(-1), "iteration"),
    (lambda: temperature_at(0, decay=1.5), "decay"),
    (lambda: routing_probs(Z, 0.0), "temperature"),
    (lambda: apply_hysteresis(Q1, torch.tensor([0]), torch.tensor([1]), 1.5), "margin"),
    (lambda: expert_log_prob(Q1, torch.tensor([0, 0, 1]), kind="hysteresis"), "previous"),
    (lambda: expert_log_prob(Q1, torch.tensor([0, 0, 1]), kind="exact"), "kind"),
    (lambda: switching_penalty(Q1, ONE_TRAJ, STEPS, "l2"), "form"),
    (lambda: router_pg_loss(torch.zeros(3), torch.zeros(2)), "expert_logp"),
    (lambda: joint_token_logprobs(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(3)),
     "expert_logp"),
    (lambda: joint_token_logprobs(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2), "last"),
     "placement"),
    (lambda: transitions(torch.zeros(3), torch.zeros(2)), "trajectory"),
    (lambda: load_balance_loss(torch.zeros(0, 2)), "q"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
