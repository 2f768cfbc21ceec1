"""PhGPO step rewards, trajectory bonus, returns and GRPO advantages (spec §2.5 with §6.1).

Released code: ``TwoLayerRollout.rollout_episode`` and ``_compute_trajectory_bonus`` (v12).
Step t with chosen tool a_t, reference tool g_t and tool output o_t:

* intent: a_t = g_t → 0.5 (+ 0.5 recovery bonus if step t−1 was wrong); same category (name
  prefix before the first "-", "other" without a dash) → 0.15; otherwise → −0.3;
* execution: +0.5 if o_t holds no error word, −0.5 otherwise;
* ``r_t = intent + execution``; the trajectory bonus is added to the last step's reward.

Trajectory bonus with m = prefix match ratio (:func:`grouprl.phgpo.metrics.match_ratio`): the
first tier with m ≥ threshold of (0.9: 15 × 0.7, 0.7: 10 × 0.8, 0.5: 6 × 0.8, 0.3: 3, 0.2: 1.5),
the factor applied only when the reference run failed; plus 2 when the first min(3, |ref|)
actions all match. Return ``R = Σ_t 0.99^t r_t``. GRPO per task (5 rollouts):
``A_i = (R_i − mean R) / (population std R + 1e-8)``, the same A_i at every step of rollout i.

The unused ``reward_exact_match = 5.0`` config field of the code plays no part (spec §6.1).
The error-word list is not given by the spec ("about 11 words") — :data:`ERROR_WORDS` [GUESS].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grouprl.advantages import RolloutBatch, compute_advantages
from grouprl.validation import check_choice, check_number

__all__ = ["ERROR_WORDS", "RewardConfig", "discounted_return", "execution_reward",
           "has_error", "intent_reward", "step_rewards", "tool_category", "trajectory_advantages",
           "trajectory_bonus"]

#: Words that mark a tool output as an execution error (case-insensitive substring) [GUESS].
ERROR_WORDS = ("error", "failed", "failure", "not found", "timeout", "timed out", "exception",
               "invalid", "denied", "unauthorized", "unavailable")


@dataclass(frozen=True)
class RewardConfig:
    """Reward constants (v12 values, spec §2.5 and §6.1).

    Attributes:
        exact, recovery, same_category, mismatch: intent terms 0.5, +0.5, 0.15, −0.3.
        exec_ok, exec_error: execution term +0.5 / −0.5.
        tiers: (threshold, bonus, factor if the reference failed), first match wins.
        first_steps, first_bonus: +2 if the first min(3, |ref|) actions match.
        gamma: discount of the return (0.99). error_words: :data:`ERROR_WORDS`.
    """

    exact: float = 0.5
    recovery: float = 0.5
    same_category: float = 0.15
    mismatch: float = -0.3
    exec_ok: float = 0.5
    exec_error: float = -0.5
    tiers: tuple[tuple[float, float, float], ...] = (
        (0.9, 15.0, 0.7), (0.7, 10.0, 0.8), (0.5, 6.0, 0.8), (0.3, 3.0, 1.0), (0.2, 1.5, 1.0))
    first_steps: int = 3
    first_bonus: float = 2.0
    gamma: float = 0.99
    error_words: tuple[str, ...] = ERROR_WORDS

    def __post_init__(self) -> None:
        check_number("gamma", self.gamma, 0.0, 1.0)
        thresholds = [t[0] for t in self.tiers]
        if thresholds != sorted(thresholds, reverse=True):
            raise ValueError(f"tiers: thresholds must decrease, got {thresholds}")


def tool_category(name: str) -> str:
    """The name's prefix before the first "-", or "other" without a dash."""
    return name.split("-", 1)[0] if "-" in name else "other"


def has_error(output: str, words: Sequence[str] = ERROR_WORDS) -> bool:
    """Whether the output contains an error word (case-insensitive)."""
    text = output.lower()
    return any(word in text for word in words)


def intent_reward(action: str, reference: str, previous_wrong: bool,
                  config: RewardConfig = RewardConfig()) -> float:
    """0.5 (+0.5 after a wrong step) on a match, 0.15 same category, −0.3 otherwise."""
    if action == reference:
        return config.exact + (config.recovery if previous_wrong else 0.0)
    if tool_category(action) == tool_category(reference):
        return config.same_category
    return config.mismatch


def execution_reward(output: str, config: RewardConfig = RewardConfig()) -> float:
    """+0.5 without an error word in the output, −0.5 with one."""
    return config.exec_error if has_error(output, config.error_words) else config.exec_ok


def trajectory_bonus(match: float, first_match: bool, reference_success: bool = True,
                     config: RewardConfig = RewardConfig()) -> float:
    """Tier bonus of the first threshold ≤ m (× factor if the reference failed) + 2·first_match."""
    check_number("match", match, 0.0, 1.0)
    bonus = next(((b if reference_success else b * f) for t, b, f in config.tiers if match >= t),
                 0.0)
    return bonus + (config.first_bonus if first_match else 0.0)


def step_rewards(actions: Sequence[str], reference: Sequence[str], outputs: Sequence[str], *,
                 reference_success: bool = True, config: RewardConfig = RewardConfig()
                 ) -> list[float]:
    """``r_t = intent_t + execution_t``, with the trajectory bonus added to the last step.

    ``actions`` and ``outputs`` are the steps run (H ≤ |reference|); m = matches / H.
    """
    if len(outputs) != len(actions):
        raise ValueError(f"outputs: expected {len(actions)} entries (one per action), got "
                         f"{len(outputs)}")
    if not actions or len(actions) > len(reference):
        raise ValueError(f"actions: expected 1..{len(reference)} steps (the reference length), "
                         f"got {len(actions)}")
    rewards, previous_wrong = [], False
    for a, g, o in zip(actions, reference, outputs):
        rewards.append(intent_reward(a, g, previous_wrong, config) + execution_reward(o, config))
        previous_wrong = a != g
    match = sum(a == g for a, g in zip(actions, reference)) / len(actions)
    n_first = min(config.first_steps, len(reference))
    first = len(actions) >= n_first and list(actions[:n_first]) == list(reference[:n_first])
    rewards[-1] += trajectory_bonus(match, first, reference_success, config)
    return rewards


def discounted_return(rewards: Sequence[float], gamma: float = 0.99) -> float:
    """``R = Σ_t γ^t r_t``."""
    check_number("gamma", gamma, 0.0, 1.0)
    return sum(gamma**t * r for t, r in enumerate(rewards))


def trajectory_advantages(returns: torch.Tensor | Sequence[float],
                          group_ids: torch.Tensor | Sequence[int], *, std: str = "population",
                          epsilon: float = 1e-8) -> torch.Tensor:
    """GRPO at trajectory level through grouprl's ``"grpo"`` estimator (float64 [N]).

    One row per trajectory (step 0, reward R_i) in group ``group_ids`` (the task).
    ``std="unbiased"`` is the estimator as registered (``(R − μ)/(σ_{n−1} + ε)``);
    ``std="population"`` (PhGPO's code, default) takes the estimator's centred values
    ``R − μ`` (``mode="mean_norm"``) and divides by the population std ``sqrt(mean_g (R − μ)²)``.
    Groups whose returns are all equal get exactly 0 (the estimator's native rule).
    """
    check_choice("std", std, ("population", "unbiased"))
    check_number("epsilon", epsilon, 0.0)
    returns = torch.as_tensor(returns, dtype=torch.float64)
    groups = torch.as_tensor(group_ids, dtype=torch.long)
    rows = torch.arange(len(returns))
    batch = RolloutBatch(group_id=groups, traj_id=rows, step=torch.zeros_like(rows),
                         reward=returns)
    if std == "unbiased":
        return compute_advantages("grpo", batch, epsilon=epsilon, invalid_penalty=0.0).double()
    centred = compute_advantages("grpo", batch, mode="mean_norm", invalid_penalty=0.0).double()
    _, codes = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=torch.float64)
    count.index_add_(0, codes, torch.ones_like(returns))
    sq = torch.zeros_like(count).index_add_(0, codes, centred * centred)
    pop_std = (sq / count).sqrt()[codes]                       # sqrt(mean_g (R − μ)²)
    return centred / (pop_std + epsilon)
