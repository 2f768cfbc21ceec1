"""PA-MoE metrics (usage per category, switch rate, router entropy, parameter occupancy), the
keyword phase labeller and the options' checks."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.moe import (
    PAMoEOptions,
    category_shares,
    expert_usage,
    keyword_phases,
    parameter_occupancy,
    phase_pretrain_loss,
    router_entropy,
    router_metrics,
    switch_rate,
)

# two trajectories: 0 → steps 0..3 with experts 0,0,1,1 (1 switch of 3); 1 → steps 0..2 with
# experts 2,0,2 (2 of 2); rows shuffled
TRAJ = torch.tensor([0, 1, 0, 1, 0, 1, 0])
STEP = torch.tensor([0, 0, 1, 1, 2, 2, 3])
EXPERTS = torch.tensor([0, 2, 0, 0, 1, 2, 1])
CATEGORY = torch.tensor([0, 1, 0, 1, 0, 1, 0])


def test_switch_rate_averages_per_trajectory():
    assert switch_rate(EXPERTS, TRAJ, STEP) == pytest.approx((1 / 3 + 2 / 2) / 2)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert switch_rate(EXPERTS[order], TRAJ[order], STEP[order]) == pytest.approx(2 / 3)
    assert math.isnan(switch_rate(EXPERTS[:1], TRAJ[:1], STEP[:1]))


def test_expert_usage_per_category():
    usage = expert_usage(EXPERTS, CATEGORY, 3, 3)
    assert torch.allclose(usage[0], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(usage[1], torch.tensor([1 / 3, 0.0, 2 / 3], dtype=torch.float64))
    assert torch.isnan(usage[2]).all()                                # no rows


def test_router_entropy():
    q = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert router_entropy(q) == pytest.approx(math.log(2) / 2)


def test_parameter_occupancy_counts_batches_where_a_category_has_the_majority():
    # batch 1: category 0 has rows {0,1,2} (3 of 4); batch 2: weights favour category 1
    s1 = category_shares(torch.tensor([0, 0, 0, 1]), 2)
    assert s1.tolist() == [0.75, 0.25]
    s2 = category_shares(torch.tensor([0, 0, 1]), 2, weight=torch.tensor([0.5, -0.5, 3.0]))
    assert s2.tolist() == [0.25, 0.75]                                # |A| weights
    s3 = category_shares(torch.tensor([0, 1]), 2)                     # a tie: nobody > 50%
    occ = parameter_occupancy(torch.stack([s1, s2, s3, s1]))
    assert occ.tolist() == [0.5, 0.25]
    assert category_shares(torch.tensor([0]), 2, weight=torch.zeros(1)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="threshold"):
        parameter_occupancy(torch.stack([s1]), threshold=2.0)


def test_router_metrics_names_and_values():
    q = torch.full((7, 3), 1 / 3)
    m = router_metrics(q, EXPERTS, TRAJ, STEP, 0.5, category=CATEGORY,
                       category_names=("coin", "sorting"))
    assert m["router/temperature"] == 0.5
    assert m["router/entropy"] == pytest.approx(math.log(3))
    assert m["router/switch_rate"] == pytest.approx(2 / 3)
    assert m["router/usage/expert_0"] == pytest.approx(3 / 7)
    assert m["router/usage/coin/expert_1"] == pytest.approx(0.5)
    assert m["router/usage/sorting/expert_2"] == pytest.approx(2 / 3)


def test_keyword_phases_follow_the_rules():
    obs = ["You are in a room.", "You see an apple.", "You pick up the apple.",
           "You heat the apple.", "You arrive at the table.", "Nothing happens.",
           "Nothing happens.", "Nothing happens."]
    acts = ["go to countertop 1", "take apple from countertop 1", "go to microwave 1",
            "heat apple with microwave 1", "put apple in/on table 1", "look", "look", "look"]
    assert keyword_phases(obs, acts) == [0, 1, 0, 1, 2, 0, 0, 3]
    assert keyword_phases(obs, acts, navigate_after="taken")[2] == 2
    rewards = [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert keyword_phases(["ok"] * 3, ["look"] * 3, rewards[:3])[2] == 0   # 2 failures only
    assert keyword_phases(["Nothing happens", "ok", "ok"], ["look"] * 3,
                          [-1.0, -1.0, 0.0]) == [0, 0, 3]
    with pytest.raises(ValueError, match="observations, actions"):
        keyword_phases(["a"], [])


def test_phase_pretrain_loss_is_masked_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 3])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert float(phase_pretrain_loss(logits, labels)) == pytest.approx((ce0 + math.log(4)) / 2)
    assert float(phase_pretrain_loss(logits, labels, torch.tensor([1, 0]))) == \
        pytest.approx(ce0)
    with pytest.raises(ValueError, match="labels"):
        phase_pretrain_loss(logits[:, :2], labels)


def test_options_defaults_and_checks():
    o = PAMoEOptions()
    assert (o.num_experts, o.rank, o.lora_alpha, o.dropout) == (4, 32, 64.0, 0.05)
    assert o.targets == ("q_proj", "k_proj", "v_proj", "o_proj") and o.uses_router
    assert (o.temperature_init, o.temperature_min, o.temperature_decay) == (1.0, 0.1, 0.95)
    assert (o.hysteresis_margin, o.switch_coef, o.load_balance_coef) == (0.2, 0.1, 0.01)
    assert (o.router_grad, o.joint_placement, o.expert_logprob) == ("joint", "broadcast", "q")
    for kwargs, name in [({"mode": "moe"}, "mode"), ({"num_experts": 0}, "num_experts"),
                         ({"router_grad": "reinforce"}, "router_grad"),
                         ({"switch_form": "l1"}, "switch_form"),
                         ({"temperature_decay": 0.0}, "temperature_decay"),
                         ({"hysteresis_margin": -0.1}, "hysteresis_margin"),
                         ({"target_modules": "q_proj"}, "target_modules"),
                         ({"dropout": 1.0}, "dropout"), ({"alpha": 0}, "alpha")]:
        with pytest.raises(ValueError, match=name):
            PAMoEOptions(**kwargs)
