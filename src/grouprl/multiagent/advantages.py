"""Advantages of a team's rows: agent-wise (Dr. MAS), vanilla trajectory, or global step-level.

Built on grouprl's ``grpo`` estimator (``grouprl.advantages``; spec-agentic-credit §7.3). With
``score_i = R_τ(i) − c·invalid_i`` (the row reward) and unbiased σ:

- ``baseline="agent"`` (Dr. MAS, ``grpo(by_agent=True)``): sample = every row of agent k in task
  group g; ``A_i = (score_i − μ_{g,k}) / (σ_{g,k} + ε)``.
- ``baseline="trajectory"`` (vanilla GRPO in a multi-agent system, ``grpo(by_agent=False)``):
  each trajectory counts once. compat "reference": its value is the mean of its rows' scores and
  every row takes that value, ``A_i = (v̄_τ(i) − μ_g) / (σ_g + ε)``; "native": its value is the
  episode reward and a row keeps its own score, ``A_i = (score_i − μ_g) / (σ_g + ε)``.
- ``baseline="step"`` (the global step-level ablation missing from the paper, spec §1.8): sample =
  every row of group g whatever its agent, ``A_i = (score_i − μ_g) / (σ_g + ε)``; computed as
  ``grpo(by_agent=True)`` with one agent for every row.

``mode="mean_norm"`` drops the σ division (``norm_adv_by_std_in_grpo = False``).

compat "reference" reproduces the released statistics: a singleton sample keeps its raw score
(μ = 0, σ = 1), and rows are first padded per model group to a multiple of ``pad_divisor`` by
random duplication (:func:`~grouprl.multiagent.rows.pad_to_divisor`), so the duplicates enter μ
and σ (and are trained on). compat "native" never pads, and a sample whose values are all equal
gives exactly ``score − μ`` (grouprl's native GRPO).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from grouprl.advantages import compute_advantages
from grouprl.validation import check_choice, check_int, check_number

from .rows import AgentRow, Episode, pad_to_divisor, to_batch

__all__ = ["BASELINES", "TeamAdvantageOptions", "TeamAdvantages", "team_advantages",
           "reference_divisor"]

BASELINES = ("agent", "trajectory", "step")


@dataclass(frozen=True)
class TeamAdvantageOptions:
    """Options of :func:`team_advantages` (module docstring).

    Attributes:
        baseline: "agent" (Dr. MAS, default), "trajectory" (vanilla) or "step".
        compat: "native" (default) or "reference" (released statistics and padding).
        invalid_penalty: c (0.1 math, 0.01 search).
        epsilon: ε added to σ (1e-6).
        mode: "mean_std_norm" (default) or "mean_norm".
        pad_divisor: the reference padding divisor ``lcm(micro·W, …)`` (:func:`reference_divisor`);
            1 pads nothing; only with compat "reference".
        pad_seed: the padding's random seed.
    """

    baseline: str = "agent"
    compat: str = "native"
    invalid_penalty: float = 0.1
    epsilon: float = 1e-6
    mode: str = "mean_std_norm"
    pad_divisor: int = 1
    pad_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("compat", self.compat, ("native", "reference"))
        check_number("invalid_penalty", self.invalid_penalty)
        check_number("epsilon", self.epsilon, 0.0)
        check_choice("mode", self.mode, ("mean_norm", "mean_std_norm"))
        check_int("pad_divisor", self.pad_divisor, 1)
        check_int("pad_seed", self.pad_seed, 0)
        if self.pad_divisor != 1 and self.compat != "reference":
            raise ValueError(f"pad_divisor: padding reproduces the released code and needs "
                             f"compat='reference'; got pad_divisor={self.pad_divisor} with "
                             f"compat={self.compat!r}")


@dataclass(frozen=True)
class TeamAdvantages:
    """The rows trained on (with reference duplicates, if any) and their advantages [N]."""

    rows: list[AgentRow]
    advantages: torch.Tensor


def reference_divisor(micro_batch_sizes: Iterable[int], world_size: int = 1) -> int:
    """``lcm(m_1·W, m_2·W, …)``: the released divisor for the log-prob / actor micro-batches."""
    check_int("world_size", world_size, 1)
    sizes = [check_int("micro_batch_sizes", m, 1) * world_size for m in micro_batch_sizes]
    return math.lcm(*sizes) if sizes else 1


def team_advantages(rows: Sequence[AgentRow], episodes: Sequence[Episode],
                    options: TeamAdvantageOptions | None = None) -> TeamAdvantages:
    """Per-row advantages on the *combined* batch of every agent (module docstring)."""
    opts = options or TeamAdvantageOptions()
    rows = list(rows)
    if opts.compat == "reference" and opts.pad_divisor > 1:
        rows = pad_to_divisor(rows, opts.pad_divisor, opts.pad_seed)
    if not rows:
        return TeamAdvantages(rows, torch.zeros(0))
    batch = to_batch(rows, episodes)
    if opts.baseline == "step":
        batch = dataclasses.replace(batch, agent_id=[0] * len(rows))
    grpo_kw = dict(mode=opts.mode, invalid_penalty=opts.invalid_penalty, epsilon=opts.epsilon,
                   compat=opts.compat, by_agent=opts.baseline != "trajectory")
    return TeamAdvantages(rows, compute_advantages("grpo", batch, **grpo_kw))
