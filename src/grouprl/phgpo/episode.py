"""One PhGPO rollout group: G rollouts of one task, step by step (spec §2.3, §2.5).

Released code: ``TwoLayerRollout.rollout_episode`` (v12). Each rollout runs
``H = min(max_steps, |ref|)`` steps (never past the reference); at step t the caller's
``logits_fn(t, histories)`` scores the tools for every rollout, :func:`sample_tools` picks with
the fused pheromone ``τ(a⁻_t, · | x)`` from the store, the simulator answers, and the rewards of
:func:`grouprl.phgpo.rewards.step_rewards` follow. The pheromone is *not* updated here: the
trainer calls :meth:`PheromoneStore.update` with each rollout's match after its policy update
(the code deposits after each task's update).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from grouprl.validation import check_int

from .metrics import match_ratio, model_match_ratio
from .rewards import RewardConfig, discounted_return, step_rewards
from .sampling import ToolSample, concat_samples, sample_tools
from .store import PheromoneStore

__all__ = ["RolloutGroup", "rollout_group"]

History = list[tuple[int, str]]
LogitsFn = Callable[[int, Sequence[History]], torch.Tensor]
Simulator = Callable[[int, int], str]          # (step, tool id) → output text


@dataclass
class RolloutGroup:
    """The G rollouts of one task.

    Attributes:
        actions, outputs, rewards: per rollout, per step. returns: R_i = Σ 0.99^t r_t.
        match, model_match: prefix match ratio and the match over non-tf steps per rollout.
        steps: every step as one :class:`ToolSample`, rows ordered (step, rollout);
        rollout: the rollout index of each row; labels: the reference tool of each row.
    """

    actions: list[list[int]]
    outputs: list[list[str]]
    rewards: list[list[float]]
    returns: list[float]
    match: list[float]
    model_match: list[float]
    steps: ToolSample
    rollout: torch.Tensor
    labels: torch.Tensor


def rollout_group(reference: Sequence[int], logits_fn: LogitsFn, store: PheromoneStore,
                  simulate: Simulator, tool_names: Sequence[str], *, group_size: int = 5,
                  max_steps: int = 20, beta: float = 0.7, lam: float = 0.2,
                  embedding: torch.Tensor | None = None, temperature: float = 0.7,
                  top_k: int = 20, epsilon: float = 0.05, teacher_forcing: float = 0.0,
                  first_step_use_pheromone: bool = False, ratio_mode: str = "fused",
                  reference_success: bool = True, reward_config: RewardConfig | None = None,
                  generator: torch.Generator | None = None) -> RolloutGroup:
    """Run ``group_size`` rollouts of a task with reference tool ids ``reference``."""
    check_int("group_size", group_size, 1)
    reward_config = reward_config or RewardConfig()
    check_int("max_steps", max_steps, 1)
    if not reference:
        raise ValueError("reference: expected at least one tool")
    horizon = min(max_steps, len(reference))                          # H = min(max, |ref|)
    histories: list[History] = [[] for _ in range(group_size)]
    prev = torch.full((group_size,), store.start, dtype=torch.long)
    emb = None if embedding is None else embedding.reshape(1, -1).expand(group_size, -1)
    samples: list[ToolSample] = []
    for t in range(horizon):
        logits = logits_fn(t, histories)
        s = sample_tools(logits, lambda c, p=prev: store.tau(p, c, emb, lam), beta=beta,
                         temperature=temperature, top_k=top_k, epsilon=epsilon,
                         first_step=torch.full((group_size,), t == 0),
                         first_step_use_pheromone=first_step_use_pheromone,
                         teacher=torch.full((group_size,), reference[t]),
                         teacher_forcing=teacher_forcing, ratio_mode=ratio_mode,
                         generator=generator)
        for i, a in enumerate(s.action.tolist()):
            histories[i].append((a, simulate(t, a)))
        prev = s.action
        samples.append(s)
    actions = [[a for a, _ in h] for h in histories]
    outputs = [[o for _, o in h] for h in histories]
    names = [tool_names[g] for g in reference]
    rewards = [step_rewards([tool_names[a] for a in acts], names, outs,
                            reference_success=reference_success, config=reward_config)
               for acts, outs in zip(actions, outputs)]
    forced = torch.stack([s.teacher_forced for s in samples], 1).tolist()   # [G, H]
    return RolloutGroup(
        actions=actions, outputs=outputs, rewards=rewards,
        returns=[discounted_return(r, reward_config.gamma) for r in rewards],
        match=[match_ratio(a, reference) for a in actions],
        model_match=[model_match_ratio(a, reference, f) for a, f in zip(actions, forced)],
        steps=concat_samples(samples),
        rollout=torch.arange(group_size).repeat(horizon),
        labels=torch.tensor(reference[:horizon]).repeat_interleave(group_size))
