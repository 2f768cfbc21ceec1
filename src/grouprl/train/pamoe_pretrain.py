"""Optional router pre-training of PA-MoE (spec-seed-systems §3.3 "Router pre-training"; off
by default, ``model.pamoe.pretrain_rollouts``): before RL, the warm start rolls out
``pretrain_rollouts`` batches (the phase router routing as at iteration 0), the released code's
keyword labeller (:func:`grouprl.moe.keyword_phases`) marks every step explore / interact /
navigate / recover from the observation it saw, its parsed action and the rewards, and the
router learns those labels by cross-entropy (Adam, ``pretrain_epochs`` passes)::

    y_t = keyword_phase(o_{t−2..t}, a_t, r_{t−1})                    per trajectory, in order
    L   = mean_rows CE(z_t, y_t),   z = router(obs, goal, experts; teacher-forced)

The labeller's verbs are ALFWorld's ("take", "heat", "go to", ...): on other envs most steps are
"explore", which pre-training then teaches (the metrics report the label shares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grouprl.agent.parser import parse_action
from grouprl.batch import Rollout
from grouprl.moe import PHASES, keyword_phases, phase_pretrain_loss

__all__ = ["PRETRAIN_ITERATION", "RouterPretraining", "phase_labels", "pretrain_router"]

PRETRAIN_ITERATION = 2 * 10**9
"""Pseudo-iteration of the pre-training rollouts' task seeds (``+ k`` for the k-th)."""


@dataclass(frozen=True)
class RouterPretraining:
    """``model.pamoe.pretrain_*``: rollouts (0 = off), epochs, Adam lr, labeller option."""

    rollouts: int = 0
    epochs: int = 5
    lr: float = 1e-3
    navigate_after: str = "processed"


def phase_labels(rows: Rollout, navigate_after: str = "processed") -> torch.Tensor:
    """(N,) keyword phase of every row, labelled per trajectory in step order from the row's
    observation, its parsed action (the reply itself when nothing parses) and its reward."""
    traj = torch.as_tensor(rows.batch.traj_id).tolist()
    step = torch.as_tensor(rows.batch.step).tolist()
    reward = torch.as_tensor(rows.batch.reward).tolist()
    labels = torch.zeros(len(rows), dtype=torch.long)
    by_traj: dict[int, list[int]] = {}
    for i, t in enumerate(traj):
        by_traj.setdefault(t, []).append(i)
    for members in by_traj.values():
        members.sort(key=lambda i: step[i])
        actions = [parse_action(rows.responses[i]).action or rows.responses[i] for i in members]
        phases = keyword_phases([rows.observations[i] for i in members], actions,
                                [reward[i] for i in members], navigate_after=navigate_after)
        labels[members] = torch.tensor(phases, dtype=torch.long)
    return labels


def pretrain_router(routing: Any, rollouts: list[Rollout], options: RouterPretraining
                    ) -> dict[str, float]:
    """Cross-entropy of the router's teacher-forced logits to the keyword phases (module
    docstring); returns ``router/pretrain_loss_first`` / ``_last``, ``router/pretrain_rows``
    and ``router/pretrain_label/<phase>`` (share of rows)."""
    labels = [phase_labels(r, options.navigate_after) for r in rollouts]
    params = [p for p in routing.router.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.lr)
    losses = []
    for _ in range(options.epochs):
        for rows, y in zip(rollouts, labels):
            optimizer.zero_grad(set_to_none=True)
            loss = phase_pretrain_loss(routing.logits(rows), y.to(params[0].device))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    every = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    shares = torch.bincount(every, minlength=len(PHASES)).double() / max(every.numel(), 1)
    return {"router/pretrain_loss_first": losses[0], "router/pretrain_loss_last": losses[-1],
            "router/pretrain_rows": float(every.numel()),
            **{f"router/pretrain_label/{p}": float(shares[i]) for i, p in enumerate(PHASES)}}
