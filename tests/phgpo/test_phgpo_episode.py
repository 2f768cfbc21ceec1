"""PhGPO rollout group and per-step loss (spec §2.5, §2.7)."""

from __future__ import annotations

import pytest
import torch

from grouprl.phgpo import PheromoneStore, sample_tools, step_loss
from grouprl.phgpo.episode import rollout_group
from grouprl.phgpo.rewards import discounted_return, step_rewards
from grouprl.phgpo.synthetic import TOOLS, ToolSimulator, synthetic_tasks

NAMES = [t.name for t in TOOLS]


def test_rollout_group_horizon_rows_and_rewards():
    task = next(t for t in synthetic_tasks(seed=0) if len(t.reference) == 4)
    sim = ToolSimulator()
    group = rollout_group(task.reference, lambda t, h: torch.zeros(len(h), 12), PheromoneStore(12),
                          lambda t, a: sim.execute(task, t, a), NAMES, group_size=3,
                          max_steps=3, teacher_forcing=0.5,
                          generator=torch.Generator().manual_seed(0))
    assert [len(a) for a in group.actions] == [3, 3, 3]                # H = min(3, 4)
    assert group.rollout.tolist() == [0, 1, 2] * 3
    assert group.labels.tolist() == [g for g in task.reference[:3] for _ in range(3)]
    assert group.steps.action.view(3, 3).t().tolist() == group.actions
    for acts, outs, rew, ret in zip(group.actions, group.outputs, group.rewards, group.returns):
        assert rew == step_rewards([NAMES[a] for a in acts], [NAMES[g] for g in task.reference],
                                   outs)
        assert ret == discounted_return(rew)
    with pytest.raises(ValueError, match="^group_size:"):
        rollout_group(task.reference, None, PheromoneStore(12), None, NAMES, group_size=0)


def _reference_loss(logits, old, adv, labels, action, mask, w_sl, clip=0.2, c_ent=0.02):
    """Independent per-row loop of w·CE + (1 − w)·m·PPO-clip − c·H (pure-policy ratio)."""
    total = 0.0
    for i in range(len(labels)):
        logp = torch.log_softmax(logits[i], -1)
        ratio = torch.exp(logp[action[i]] - old[i])
        pg = -min(ratio * adv[i], ratio.clamp(1 - clip, 1 + clip) * adv[i])
        ent = -(logp.exp() * logp).sum()
        total += w_sl * -logp[labels[i]] + (1 - w_sl) * pg * mask[i] - c_ent * ent
    return total / len(labels)


@pytest.mark.parametrize("mode", ["reference", "policy"])
def test_step_loss_matches_independent_reference(mode):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    s = sample_tools(logits, torch.ones(6, 5, dtype=torch.float64), beta=0.5, top_k=3,
                     teacher=torch.arange(6) % 5, teacher_forcing=0.4, ratio_mode=mode,
                     generator=gen)
    new_logits = logits + 0.3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3, 0.0], dtype=torch.float64)
    labels = torch.arange(6) % 5
    loss, metrics = step_loss(new_logits, s, adv, labels, sl_weight=0.3, ratio_mode=mode)
    mask = torch.ones(6) if mode == "reference" else (~s.teacher_forced).double()
    expected = _reference_loss(new_logits, s.old_logprob, adv, labels, s.action, mask, 0.3)
    assert float(loss) == pytest.approx(float(expected), abs=1e-12)
    assert 0.0 <= metrics["clip_fraction"] <= 1.0


def test_step_loss_bad_arguments():
    s = sample_tools(torch.zeros(1, 3), torch.ones(1, 3), beta=0.5)
    with pytest.raises(ValueError, match="^sl_weight:"):
        step_loss(torch.zeros(1, 3), s, torch.zeros(1), torch.zeros(1, dtype=torch.long),
                  sl_weight=1.5)
