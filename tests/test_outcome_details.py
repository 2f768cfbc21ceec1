"""Outcome estimators: token-weighted whitening of REINFORCE++ against verl's masked formula,
and the documented native-vs-reference differences of GRPO and RLOO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grouprl.advantages import RolloutBatch, compute_advantages


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's token-level whitening, written out: unbiased masked variance, rsqrt(var + 1e-8)."""
    mean = (values * mask).sum() / mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / mask.sum()
    var = var * mask.sum() / (mask.sum() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def test_reinforce_pp_with_response_length_equals_token_whitening():
    rng = np.random.default_rng(0)
    n, t = 12, 9
    batch = RolloutBatch(group_id=np.repeat(np.arange(3), 4), traj_id=np.arange(n),
                         step=np.zeros(n, dtype=np.int64), reward=rng.normal(size=n))
    lengths = torch.from_numpy(rng.integers(1, t + 1, n))
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    reward = torch.as_tensor(batch.reward)
    baseline = reward - reward.reshape(3, 4).mean(1).repeat_interleave(4)
    expected = masked_whiten(baseline[:, None] * mask, mask)
    got = compute_advantages("reinforce_pp", batch, response_length=lengths)
    torch.testing.assert_close(got[:, None] * mask.float(), expected.float())
    # Without lengths each row weighs 1: the row-level whitening.
    unit = compute_advantages("reinforce_pp", batch)
    ones = torch.ones(n, 1, dtype=torch.float64)
    torch.testing.assert_close(unit, masked_whiten(baseline[:, None], ones)[:, 0].float())


def test_reinforce_pp_rejects_wrong_length():
    batch = RolloutBatch(group_id=[0, 0], traj_id=[0, 1], step=[0, 0], reward=[1.0, 0.0])
    with pytest.raises(ValueError, match="response_length: has 3 rows, the batch has 2"):
        compute_advantages("reinforce_pp", batch, response_length=torch.tensor([1, 2, 3]))


def two_step_group():
    # One task, two trajectories of two steps; trajectory 0 wins (return 1) with an invalid
    # first step, trajectory 1 fails (return 0).
    return RolloutBatch(group_id=[0, 0, 0, 0], traj_id=[0, 0, 1, 1], step=[0, 1, 0, 1],
                        reward=[0.0, 1.0, 0.0, 0.0], invalid=[True, False, False, False])


def test_grpo_penalty_placement_native_vs_reference():
    c = 0.5
    ref = compute_advantages("grpo", two_step_group(), compat="reference", invalid_penalty=c,
                             mode="mean_norm")
    nat = compute_advantages("grpo", two_step_group(), invalid_penalty=c, mode="mean_norm")
    # reference: trajectory values are the mean row scores (1 − c/2, 0), shared by all rows.
    v0, v1 = 1 - c / 2, 0.0
    m = (v0 + v1) / 2
    assert ref.tolist() == pytest.approx([v0 - m, v0 - m, v1 - m, v1 - m])
    # native: statistics over returns (1, 0); the penalty stays on the invalid row.
    assert nat.tolist() == pytest.approx([1 - c - 0.5, 0.5, -0.5, -0.5])


def test_rloo_single_trajectory_group():
    batch = RolloutBatch(group_id=[0, 1, 1], traj_id=[0, 1, 2], step=[0, 0, 0],
                         reward=[3.0, 1.0, 0.0])
    assert compute_advantages("rloo", batch, compat="reference").tolist() == [3.0, 1.0, -1.0]
    assert compute_advantages("rloo", batch).tolist() == [0.0, 1.0, -1.0]
