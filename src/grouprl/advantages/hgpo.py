"""HGPO: Hierarchy-of-Groups Policy Optimization (ICLR 2026, arXiv 2602.22817 §4).

Two steps with the same current state can carry different memory contexts (the last K steps in
the prompt). HGPO assigns each step to nested groups ``G_0 ⊇ G_1 ⊇ … ⊇ G_K``, where ``G_k``
holds the steps of the task whose current state *and* previous k states are identical
(context operator ``C_k(s_t) = (s_{t−k}, …, s_t)``), computes a relative advantage in each group
and averages them with weights growing with depth:

    a_k = (R_t − μ_k) / (σ_k + ε)            (population σ; mode "mean_norm" drops σ)
    A   = Σ_k w_k a_k / (Σ_k w_k + ε),       w_k = (k + level_offset)^α

over the levels whose group has ≥ 2 members and whose item is non-zero. Levels use the released
code's indexing k = 1..K+1 (k = paper level + 1); ``level_offset=1`` reproduces the code's
weights (k+1)^α = {2, 3, 4} for K = 2 and α = 1, ``level_offset=0`` the paper's {1, 2, 3}.
``base_group=True`` adds GiGPO's episode advantage as one more item of weight 1.

Defaults (``recipe/hgpo`` config and scripts): γ = 0.95, K = ``history_length`` = 2, α = 1.0,
base_group = False, mode = "mean_std_norm", invalid penalty 0.1.

Both compats (spec §3.3): clusters use only the states of the row's *own* trajectory, in step
order (the released code relies on batch order; here ``step`` decides, so shuffled rows are
safe); a revisit joins the cluster again; a step whose current state is unique in its task gets
0 unless ``base_group``; items that are exactly 0 are dropped and the weights renormalised.
compat="native" differs only in the zero-variance rule of :func:`group_normalize` (a cluster of
equal returns gives exact zeros, so it is dropped instead of contributing float noise) and in
the base group's episode statistics (each trajectory once, as GiGPO native).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grouprl.validation import check_bool, check_choice, check_int, check_number

from .gigpo import episode_advantage
from .options import MODES, CommonOptions
from .outcome import require
from .returns import step_returns
from .rows import Rows
from .segments import group_normalize, pair_codes, segment_stats

__all__ = ["HGPOOptions", "hgpo"]


@dataclass(frozen=True)
class HGPOOptions(CommonOptions):
    """Attributes:
    gamma: γ of the discounted step return; 0.95.
    history_length: K, the memory window of the prompt (levels 0..K); 2 (scripts: "2 or 4").
    alpha: α of the length weights (k + level_offset)^α; 1.0 (α = 0: uniform).
    base_group: add GiGPO's episode advantage as a level of weight 1; False.
    mode: "mean_std_norm" (default) or "mean_norm".
    level_offset: 1 = released code's weights (k+1)^α; 0 = the paper's.
    """

    gamma: float = 0.95
    history_length: int = 2
    alpha: float = 1.0
    base_group: bool = False
    mode: str = "mean_std_norm"
    level_offset: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("gamma", self.gamma, 0.0, 1.0)
        check_int("history_length", self.history_length, 0)
        check_number("alpha", self.alpha)
        check_bool("base_group", self.base_group)
        check_choice("mode", self.mode, MODES)
        check_choice("level_offset", self.level_offset, (0, 1))


def hgpo(rows: Rows, opts: HGPOOptions) -> torch.Tensor:
    """Per-row hierarchical advantage; one vectorised pass per level (K + 1 passes)."""
    state = require(rows, "state", "state", "hgpo")
    returns = step_returns(rows, opts.gamma) - opts.invalid_penalty * rows.invalid
    order = rows.order
    group_s, state_s, step_s, return_s = (rows.group[order], state[order], rows.step[order],
                                          returns[order])
    num_states = max(rows.num_states, 1)
    weighted = torch.zeros(rows.n, dtype=torch.float64)   # Σ w·a, rows in (traj, step) order
    weight = torch.zeros(rows.n, dtype=torch.float64)     # Σ w
    member = torch.arange(rows.n)                          # sorted positions present at level k
    key, num = pair_codes(group_s, state_s, num_states)    # k = 1: (task, s_t)
    for k in range(1, opts.history_length + 2):
        if k > 1:  # extend the context key by s_{t−k+1}, for steps t ≥ k − 1
            deep = step_s[member] >= k - 1
            member, key = member[deep], key[deep]
            if member.numel() == 0:
                break
            key, num = pair_codes(key, state_s[member - (k - 1)], num_states)
        value = return_s[member]
        stats = segment_stats(value, key, num, unbiased=False)
        a = group_normalize(value, key, stats, mode=opts.mode, epsilon=opts.epsilon,
                            compat=opts.compat, singleton="zero")
        item = (stats.count[key] >= 2) & (a != 0)
        w_k = float(k + opts.level_offset) ** opts.alpha
        weighted.index_add_(0, member, torch.where(item, w_k * a, 0.0))
        weight.index_add_(0, member, item.to(torch.float64) * w_k)
    out_weighted = torch.empty_like(weighted)
    out_weight = torch.empty_like(weight)
    out_weighted[order], out_weight[order] = weighted, weight
    if opts.base_group:
        a_episode = episode_advantage(rows, opts, opts.mode)
        item = a_episode != 0
        out_weighted += torch.where(item, a_episode, 0.0)
        out_weight += item.to(torch.float64)
    return out_weighted / (out_weight + opts.epsilon)
