"""GraphGPO: graph-based credit assignment (Cheng et al., ICML 2026, arXiv 2605.26684 §4).

All rollouts of a task are merged into one state-transition graph: identical states are one
node, every step is an edge ``s → s'`` of cost 1, and the last step of a successful trajectory
leads to a SUCCESS node. ``d(s)`` is the fewest edges from s to SUCCESS (Dijkstra with unit
costs = breadth-first search on the reversed graph); unreachable nodes get ``d_max + 1`` where
``d_max`` is the group's largest finite distance (0 without success, so every node has d = 1).

    R^G_i   = 10 · ω^{d(s'_i)} − c·invalid_i        (normalize_distance: 10·ω^{d(s')−d(s)+1})
    A_step  = (R^G − μ_s) / (σ_s + ε)                over the rows leaving the same state s
    A       = β_step · A_step + β_E · A_E             (A_E: GiGPO's episode advantage)

The constant 10 and the exponent ``d(s')`` (not the paper's ``d(s') + c``) follow the released
code; they differ from the paper by the factor ω, which cancels under "mean_std_norm".

Defaults (``recipe/GraphGPO`` config): ω = 0.1 (ALFWorld; 0.2 WebShop, 0.8 Sokoban),
step_weight = 1.0, episode_weight = 1.0, normalize_distance = False, mode = "mean_std_norm".

compat="reference" reproduces the recipe: step groups by exact (task, state) with unbiased σ and
singletons → 0; episode statistics cross-step (GiGPO reference). compat="native" applies GiGPO's
native rules (each trajectory once in A_E; equal values give exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grouprl.validation import check_bool, check_choice, check_number

from .gigpo import episode_advantage, step_group_advantage
from .options import MODES, CommonOptions
from .outcome import require
from .rows import Rows
from .segments import pair_codes

__all__ = ["GraphGPOOptions", "graphgpo", "distances_to_success"]

SUCCESS_REWARD = 10.0   # hard-coded in the released compute_graph_path_returns


@dataclass(frozen=True)
class GraphGPOOptions(CommonOptions):
    """Attributes:
    omega: ω ∈ (0, 1), the distance discount (released config re-purposes ``gamma``); 0.1.
    step_weight: β_step, weight of the graph step advantage; 1.0.
    episode_weight: β_E, weight of the episode advantage; 1.0 (0 skips it).
    normalize_distance: use the progress reward 10·ω^{d(s')−d(s)+1}; False.
    mode: "mean_std_norm" (default) or "mean_norm".
    """

    omega: float = 0.1
    step_weight: float = 1.0
    episode_weight: float = 1.0
    normalize_distance: bool = False
    mode: str = "mean_std_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("omega", self.omega, 0.0, 1.0, low_open=True, high_open=True)
        check_number("step_weight", self.step_weight)
        check_number("episode_weight", self.episode_weight)
        check_bool("normalize_distance", self.normalize_distance)
        check_choice("mode", self.mode, MODES)


def distances_to_success(rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d(s_i), d(dst_i))`` per row: shortest edge counts to SUCCESS within the row's group.

    One breadth-first sweep over all groups at once: each pass marks, with distance d + 1, the
    unvisited sources of edges whose destination sits at distance d (O(E) per pass, passes =
    the longest shortest path).
    """
    state = require(rows, "state", "state", "graphgpo")
    next_state = require(rows, "next_state", "next_state", "graphgpo")
    success_code = rows.num_states                    # one extra state code: SUCCESS
    final_success = (rows.remaining == 0) & rows.traj_success[rows.traj]
    dst_state = torch.where(final_success, success_code, next_state)
    num_codes = rows.num_states + 1
    node, num_nodes = pair_codes(torch.cat([rows.group, rows.group]),
                                 torch.cat([state, dst_state]), num_codes)
    src, dst = node[:rows.n], node[rows.n:]
    node_group = torch.empty(num_nodes, dtype=torch.int64)
    node_group[src], node_group[dst] = rows.group, rows.group
    dist = torch.full((num_nodes,), -1, dtype=torch.int64)
    dist[dst[final_success]] = 0
    d = 0
    while True:
        frontier = (dist[dst] == d) & (dist[src] < 0)
        if not bool(frontier.any()):
            break
        dist[src[frontier]] = d + 1
        d += 1
    # Unreachable nodes: the group's largest finite distance + 1 (1 in a group without success).
    far = torch.zeros(rows.num_groups, dtype=torch.int64).scatter_reduce_(
        0, node_group, dist.clamp_min(0), "amax")
    dist = torch.where(dist < 0, far[node_group] + 1, dist)
    return dist[src], dist[dst]


def graphgpo(rows: Rows, opts: GraphGPOOptions) -> torch.Tensor:
    """``A = β_step · A_step(R^G) + β_E · A_E`` (see module docstring)."""
    d_src, d_dst = distances_to_success(rows)
    exponent = (d_dst - d_src + 1) if opts.normalize_distance else d_dst
    graph_return = (SUCCESS_REWARD * torch.pow(torch.tensor(opts.omega, dtype=torch.float64),
                                               exponent.to(torch.float64))
                    - opts.invalid_penalty * rows.invalid)                            # R^G
    adv = opts.step_weight * step_group_advantage(rows, graph_return, opts, opts.mode, "graphgpo")
    if opts.episode_weight != 0:
        adv = adv + opts.episode_weight * episode_advantage(rows, opts, opts.mode)
    return adv
