"""PhGPO step rewards, returns, GRPO advantages, metrics (spec §2.5, §2.6; §2.11 checks 2–3)."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.phgpo.metrics import (
    full_match_ratio,
    is_success,
    match_ratio,
    model_match_ratio,
    next_tool_accuracy,
    pass_at_k,
)
from grouprl.phgpo.rewards import (
    RewardConfig,
    discounted_return,
    has_error,
    intent_reward,
    step_rewards,
    tool_category,
    trajectory_advantages,
    trajectory_bonus,
)

OK = "done"


def test_step_rewards_and_return_of_check_2():
    ref = ["fs-list", "fs-read", "mail-send"]
    act = ["fs-list", "web-search", "mail-send"]
    r = step_rewards(act, ref, [OK, OK, OK])
    assert r == pytest.approx([1.0, 0.2, 7.5], abs=1e-12)
    assert discounted_return(r, 0.99) == pytest.approx(8.54875, abs=1e-12)


def test_intent_terms_category_and_recovery():
    assert tool_category("fs-read") == "fs" and tool_category("search") == "other"
    assert intent_reward("fs-read", "fs-read", previous_wrong=False) == 0.5
    assert intent_reward("fs-read", "fs-read", previous_wrong=True) == 1.0
    assert intent_reward("fs-write", "fs-read", previous_wrong=True) == 0.15
    assert intent_reward("search", "lookup", previous_wrong=False) == 0.15   # both "other"
    assert intent_reward("web-search", "fs-read", previous_wrong=False) == -0.3


def test_execution_error_words_cost_one_point():
    assert has_error("Permission DENIED") and not has_error("all good")
    ok = step_rewards(["a-x"], ["a-x"], ["fine"])
    bad = step_rewards(["a-x"], ["a-x"], ["Error: timeout"])
    assert ok[0] - bad[0] == pytest.approx(1.0)


@pytest.mark.parametrize("m, success, first, expected", [
    (1.0, True, False, 15.0), (0.9, False, False, 10.5), (0.75, True, False, 10.0),
    (0.7, False, False, 8.0), (0.5, False, True, 6.8), (0.3, False, False, 3.0),
    (0.25, True, True, 3.5), (0.1, True, False, 0.0), (0.1, True, True, 2.0)])
def test_trajectory_bonus_tiers(m, success, first, expected):
    assert trajectory_bonus(m, first, success) == pytest.approx(expected)


def test_first_three_bonus_needs_all_first_actions():
    ref = ["a-1", "a-2", "a-3", "a-4"]
    r_all = step_rewards(["a-1", "a-2", "a-3", "b-9"], ref, [OK] * 4)
    # m = 0.75 → +10, plus +2 for the first three; last step: −0.3 + 0.5
    assert r_all[-1] == pytest.approx(0.2 + 12.0)
    short = step_rewards(["a-1", "a-2"], ["a-1", "a-2"], [OK] * 2)     # min(3, |ref|) = 2
    assert short[-1] == pytest.approx(1.0 + 15.0 + 2.0)


def _grpo_population(returns, groups, eps=1e-8):
    """Independent slow reference: per group, (R − mean) / (population std + ε)."""
    out = []
    for i, g in enumerate(groups):
        vals = [r for r, h in zip(returns, groups) if h == g]
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        out.append(0.0 if sd == 0 else (returns[i] - mu) / (sd + eps))
    return out


def test_grpo_values_of_check_3():
    returns = [8.54875, 24.5, 1.2, -0.9, 8.54875]
    adv = trajectory_advantages(returns, [0] * 5)
    assert adv.tolist() == pytest.approx([0.018980, 1.807799, -0.805130, -1.040630, 0.018980],
                                         abs=1e-6)
    r = torch.tensor(returns, dtype=torch.float64)
    assert float(r.mean()) == pytest.approx(8.3795) and \
        float(r.std(unbiased=False)) == pytest.approx(8.917199, abs=1e-6)


def test_grpo_several_groups_and_unbiased_option_match_reference():
    gen = torch.Generator().manual_seed(0)
    returns = (torch.randn(15, generator=gen) * 5).tolist()
    groups = [i // 5 for i in range(15)]
    pop = trajectory_advantages(returns, groups)
    assert pop.tolist() == pytest.approx(_grpo_population(returns, groups), abs=1e-5)
    unb = trajectory_advantages(returns, groups, std="unbiased")
    scale = math.sqrt(4 / 5)                          # σ_pop / σ_unbiased for n = 5
    assert unb.tolist() == pytest.approx((pop * scale).tolist(), abs=1e-5)
    assert trajectory_advantages([3.0, 3.0, 3.0], [1, 1, 1]).tolist() == [0.0, 0.0, 0.0]


def test_metrics():
    assert match_ratio([1, 2, 9], [1, 2, 3, 4]) == pytest.approx(2 / 3)
    assert full_match_ratio([1, 2, 9], [1, 2, 3, 4]) == pytest.approx(0.5)
    assert match_ratio([], [1]) == 0.0
    assert is_success(0.7) and not is_success(0.7, reference_success=False)
    assert not is_success(0.69)
    assert model_match_ratio([1, 2, 9], [1, 2, 3], [True, False, False]) == pytest.approx(0.5)
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    assert next_tool_accuracy(logits, torch.tensor([1, 1, 0])) == pytest.approx(2 / 3)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)
    assert pass_at_k(5, 0, 3) == 0.0


@pytest.mark.parametrize("call, name", [
    (lambda: step_rewards(["a"], ["a"], []), "outputs"),
    (lambda: step_rewards(["a", "b"], ["a"], ["x", "y"]), "actions"),
    (lambda: trajectory_bonus(1.5, False), "match"),
    (lambda: discounted_return([1.0], 1.5), "gamma"),
    (lambda: trajectory_advantages([1.0], [0], std="sample"), "std"),
    (lambda: RewardConfig(tiers=((0.2, 1.0, 1.0), (0.9, 15.0, 1.0))), "tiers"),
    (lambda: pass_at_k(3, 4, 1), "c"),
    (lambda: full_match_ratio([1], []), "reference"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()
