"""GiGPO: Group-in-Group Policy Optimization (Feng et al., NeurIPS 2025, arXiv 2505.10978 §4).

Two nested relative advantages, no critic, no extra rollouts:

- episode level (Eq. 3): ``A_E(τ) = (R(τ) − mean_g R) / F_norm`` over the N trajectories of a task;
- step level (Eq. 6–7): steps of the same task whose anchor state ``s`` is identical form a step
  group; ``A_S = (R_t − mean_{s} R) / F_norm`` with the discounted return ``R_t`` (Eq. 5);
- combination (Eq. 8): ``A = A_E + ω · A_S``.

Defaults (released config and paper): γ = 0.95, ω = 1.0, mode = "mean_norm" (the config default;
the ALFWorld script uses "mean_std_norm"), invalid penalty 0.1.

compat="reference" (verl-agent ``gigpo/core_gigpo.py``, spec §2):
    the episode statistics run over *every row* of the group (``compute_mean_std_cross_steps``),
    so long trajectories weigh more; a group with one row keeps its raw score (μ = 0, σ = 1);
    step singletons get A_S = 0; σ is the unbiased std plus ε.
compat="native" (default) differs in exactly two places:
    1. the episode statistics count each trajectory once with its return, as Eq. 3;
    2. a group (episode or step) whose sample values are all equal gets exactly ``x − μ`` with μ
       that common value and no std division (0 for equal values, no float noise; an invalid row
       in an otherwise uniform group keeps ``−c``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grouprl.validation import check_choice, check_number

from .options import MODES, CommonOptions
from .outcome import require, row_scores
from .returns import step_returns
from .rows import Rows
from .segments import Mode, group_normalize, pair_codes, segment_stats

__all__ = ["GiGPOOptions", "gigpo", "episode_advantage", "step_group_advantage"]


@dataclass(frozen=True)
class GiGPOOptions(CommonOptions):
    """Attributes:
    gamma: γ of the discounted step return (Eq. 5); 0.95 in every agent script.
    step_weight: ω, weight of the step advantage (Eq. 8); 1.0 ("without tuning").
    mode: "mean_norm" (F_norm = 1, released default) or "mean_std_norm" (F_norm = std).
    """

    gamma: float = 0.95
    step_weight: float = 1.0
    mode: str = "mean_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("gamma", self.gamma, 0.0, 1.0)
        check_number("step_weight", self.step_weight)
        check_choice("mode", self.mode, MODES)


def episode_advantage(rows: Rows, opts: CommonOptions, mode: Mode) -> torch.Tensor:
    """GiGPO's episode advantage ``A_E`` per row (Eq. 3), value ``score_i = ret − c·invalid_i``.

    "reference": sample = every row's score in the group (cross-step), singleton → raw score.
    "native": sample = each trajectory's return once; all-equal sample → ``score − μ``.
    """
    score = row_scores(rows, opts.invalid_penalty)
    kw = dict(mode=mode, epsilon=opts.epsilon, compat=opts.compat, singleton="raw")
    if opts.compat == "reference":
        stats = segment_stats(score, rows.group, rows.num_groups, unbiased=True)
    else:
        stats = segment_stats(rows.traj_return, rows.traj_group, rows.num_groups, unbiased=True)
    return group_normalize(score, rows.group, stats, **kw)


def step_group_advantage(rows: Rows, value: torch.Tensor, opts: CommonOptions, mode: Mode,
                         estimator: str) -> torch.Tensor:
    """Anchor-state grouping (Eq. 6–7): normalise ``value`` within (group, state); singleton → 0."""
    state = require(rows, "state", "state", estimator)
    key, num = pair_codes(rows.group, state, max(rows.num_states, 1))
    stats = segment_stats(value, key, num, unbiased=True)
    return group_normalize(value, key, stats, mode=mode, epsilon=opts.epsilon,
                           compat=opts.compat, singleton="zero")


def gigpo(rows: Rows, opts: GiGPOOptions) -> torch.Tensor:
    """``A = A_E + ω·A_S``, step level on the penalised return ``R_t − c·invalid_t``."""
    returns = step_returns(rows, opts.gamma) - opts.invalid_penalty * rows.invalid   # R_t (Eq. 5)
    a_step = step_group_advantage(rows, returns, opts, opts.mode, "gigpo")          # A_S (Eq. 7)
    a_episode = episode_advantage(rows, opts, opts.mode)                            # A_E (Eq. 3)
    return a_episode + opts.step_weight * a_step                                    # Eq. 8
