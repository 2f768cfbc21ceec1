"""Spec-seed-systems §1.10 items 3, 4, 7: reward broadcast and penalty, the worked agent-wise /
vanilla example value by value, the step-level ablation, and reference padding."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest

from grouprl.multiagent import (
    MathRefine,
    MathTeamEnv,
    TeamAdvantageOptions,
    collect_team_rollouts,
    pad_to_divisor,
    reference_divisor,
    row_rewards,
    team_advantages,
    to_batch,
)

APPROVE, REJECT = "<verify>approve</verify>", "<verify>reject</verify>"


@pytest.fixture
def worked(scripted):
    """Spec §1.10 item 4: one group, trajectories A (S✓ V✓ approve, reward 1), B (S, V reject,
    S; reward 0), C (S, V unparsable → approve; reward 0). Gold answer 7."""
    gen = scripted({"Solver": [["\\boxed{7}", "\\boxed{8}", "\\boxed{9}"], ["\\boxed{5}"]],
                    "Verifier": [[APPROVE, REJECT, "looks fine"]]})
    return collect_team_rollouts(lambda: MathTeamEnv(difficulty=[1, 2], size=4), MathRefine(),
                                 gen, [0], 3, 1)


def _by(roll, adv):
    """{(traj, agent, turn): advantage}"""
    return {(r.traj_id, r.agent, r.turn): float(a) for r, a in zip(roll.rows, adv)}


def test_worked_example_structure_and_row_scores(worked):
    assert [e.reward for e in worked.episodes] == [1.0, 0.0, 0.0]
    keys = [(r.traj_id, r.agent[0], r.valid) for r in worked.rows]
    assert keys == [(0, "S", True), (1, "S", True), (2, "S", True), (0, "V", True),
                    (1, "V", True), (2, "V", False), (1, "S", True)]
    scores = row_rewards(worked.rows, worked.episodes, 0.1)
    assert scores == pytest.approx([1, 0, 0, 1, 0, -0.1, 0], abs=1e-12)


def test_reward_broadcast_and_invalid_penalty(worked):
    # every row gets its trajectory's episode reward; invalid rows lose c (0.01 for search)
    for coef in (0.1, 0.01):
        scores = row_rewards(worked.rows, worked.episodes, coef)
        for row, s in zip(worked.rows, scores):
            ep = worked.episodes[row.traj_id].reward
            assert s == pytest.approx(ep - (0.0 if row.valid else coef), abs=1e-15)
    batch = to_batch(worked.rows, worked.episodes)
    assert list(batch.reward) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]   # on invocation 0 only
    assert list(batch.step) == [0, 0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("compat", ["native", "reference"])
def test_worked_example_agent_wise(worked, compat):
    res = team_advantages(worked.rows, worked.episodes,
                          TeamAdvantageOptions(baseline="agent", compat=compat))
    adv = _by(worked, res.advantages)
    assert adv[0, "Solver", 0] == pytest.approx(1.4999970, abs=1e-6)
    assert adv[1, "Solver", 0] == pytest.approx(-0.4999990, abs=1e-6)
    assert adv[1, "Solver", 2] == pytest.approx(-0.4999990, abs=1e-6)
    assert adv[2, "Solver", 0] == pytest.approx(-0.4999990, abs=1e-6)
    assert adv[0, "Verifier", 1] == pytest.approx(1.1507910, abs=1e-6)
    assert adv[1, "Verifier", 1] == pytest.approx(-0.4931962, abs=1e-6)
    assert adv[2, "Verifier", 1] == pytest.approx(-0.6575949, abs=1e-6)


def test_worked_example_vanilla_reference(worked):
    res = team_advantages(worked.rows, worked.episodes,
                          TeamAdvantageOptions(baseline="trajectory", compat="reference"))
    expected = {0: 1.1536696, 1: -0.5346274, 2: -0.6190422}
    for row, a in zip(worked.rows, res.advantages):
        assert float(a) == pytest.approx(expected[row.traj_id], abs=1e-6)


def _slow(sample, value, eps=1e-6):
    return (value - statistics.mean(sample)) / (statistics.stdev(sample) + eps)


def test_worked_example_vanilla_native_and_step_level(worked):
    scores = row_rewards(worked.rows, worked.episodes, 0.1)
    native = team_advantages(worked.rows, worked.episodes,
                             TeamAdvantageOptions(baseline="trajectory"))
    returns = [e.reward for e in worked.episodes]            # each trajectory once: [1, 0, 0]
    for s, a in zip(scores, native.advantages):
        assert float(a) == pytest.approx(_slow(returns, s), abs=1e-6)
    # C's invalid Verifier row keeps its own score: (−0.1 − 1/3) / (0.5773503 + ε)
    assert float(native.advantages[5]) == pytest.approx(-0.750554, abs=1e-5)
    step = team_advantages(worked.rows, worked.episodes, TeamAdvantageOptions(baseline="step"))
    for s, a in zip(scores, step.advantages):
        assert float(a) == pytest.approx(_slow(scores, s), abs=1e-6)


def test_mean_norm_mode_drops_the_std(worked):
    res = team_advantages(worked.rows, worked.episodes, TeamAdvantageOptions(mode="mean_norm"))
    assert _by(worked, res.advantages)[0, "Solver", 0] == pytest.approx(0.75, abs=1e-7)


def test_reference_padding_reproduces_duplicated_statistics(worked):
    # Solver group has 4 rows, Verifier group 3: divisor 4 adds one Verifier duplicate
    opts = TeamAdvantageOptions(compat="reference", pad_divisor=4, pad_seed=7)
    res = team_advantages(worked.rows, worked.episodes, opts)
    assert len(res.rows) == 8 and [r.duplicate for r in res.rows] == [False] * 7 + [True]
    verifier_rows = [i for i, r in enumerate(worked.rows) if r.agent == "Verifier"]
    pick = int(np.random.default_rng(7).choice(3, 1, replace=False)[0])
    dup_src = worked.rows[verifier_rows[pick]]
    assert res.rows[-1] == dataclasses.replace(dup_src, turn=3 if dup_src.traj_id == 1 else 2,
                                               duplicate=True)
    scores = row_rewards(res.rows, worked.episodes, 0.1)
    v_sample = [s for r, s in zip(res.rows, scores) if r.agent == "Verifier"]
    native_sample = [1.0, 0.0, -0.1]
    assert len(v_sample) == 4
    assert (statistics.mean(v_sample), statistics.stdev(v_sample)) != pytest.approx(
        (statistics.mean(native_sample), statistics.stdev(native_sample)))
    for r, s, a in zip(res.rows, scores, res.advantages):
        sample = v_sample if r.agent == "Verifier" else [1.0, 0.0, 0.0, 0.0]
        assert float(a) == pytest.approx(_slow(sample, s), abs=1e-6)
    # native never pads
    assert len(team_advantages(worked.rows, worked.episodes).rows) == 7


def test_reference_padding_enters_trajectory_averages(worked):
    opts = TeamAdvantageOptions(baseline="trajectory", compat="reference", pad_divisor=4,
                                pad_seed=7)
    res = team_advantages(worked.rows, worked.episodes, opts)
    scores = row_rewards(res.rows, worked.episodes, 0.1)
    means = [statistics.mean(s for r, s in zip(res.rows, scores) if r.traj_id == t)
             for t in range(3)]
    for r, a in zip(res.rows, res.advantages):
        assert float(a) == pytest.approx(_slow(means, means[r.traj_id]), abs=1e-6)


def test_pad_to_divisor_counts_per_group(worked):
    padded = pad_to_divisor(worked.rows, 3, seed=0)      # Solver 4 → 6, Verifier 3 → 3
    assert sum(r.agent == "Solver" for r in padded) == 6
    assert sum(r.agent == "Verifier" for r in padded) == 3
    many = pad_to_divisor(worked.rows, 16, seed=0)        # more copies than rows: replacement
    assert sum(r.agent == "Verifier" for r in many) == 16
    assert reference_divisor([4, 4, 2], world_size=4) == 16
    assert reference_divisor([3, 4]) == 12


def test_bad_advantage_options_raise():
    with pytest.raises(ValueError, match="baseline"):
        TeamAdvantageOptions(baseline="global")
    with pytest.raises(ValueError, match="pad_divisor.*compat='reference'"):
        TeamAdvantageOptions(pad_divisor=4)
    with pytest.raises(ValueError, match="pad_divisor"):
        TeamAdvantageOptions(compat="reference", pad_divisor=0)
    with pytest.raises(ValueError, match="mode"):
        TeamAdvantageOptions(mode="std")
