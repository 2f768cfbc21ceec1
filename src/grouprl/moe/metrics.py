"""PA-MoE metrics (spec-seed-systems §3.1, §3.4): expert usage per task category, switch rate per
trajectory, router entropy, and the paper's parameter-occupancy measure.

* usage:      ``U[c, e] = #{rows of category c routed to e} / #{rows of category c}``
* switch rate: per trajectory ``#{t : e_t ≠ e_{t−1}} / #transitions``, averaged over the
  trajectories with at least one transition
* entropy:    ``mean_n −Σ_e q_{n,e} log q_{n,e}`` (0 log 0 = 0)
* occupancy:  the Figure 1 caption's "fraction of training batches in which a task category
  contributes > 50% of the batch": ``occ_c = mean_b 1[s_{b,c} > 0.5]`` with ``s_{b,c}`` the
  category's share of batch b (:func:`category_shares`).

What "contributes" measures is not stated in what could be read (spec §3.1). Our choice for the
study: weigh each row by its policy-gradient weight ``w_n = |A_n| · L_n`` (advantage magnitude
times response tokens: the rows that move the parameters), passed as ``weight``;
``weight=None`` counts rows; a learner that can split gradients by category may pass
per-category gradient norms instead (``category=arange(C)``, ``weight=norms``).
"""

from __future__ import annotations

import math

import torch

from grouprl.validation import check_int, check_number

from .routing import transitions

__all__ = ["expert_usage", "switch_rate", "router_entropy", "category_shares",
           "parameter_occupancy", "router_metrics"]


def expert_usage(experts: torch.Tensor, category: torch.Tensor, num_experts: int,
                 num_categories: int) -> torch.Tensor:
    """(C, E) fraction of each category's rows routed to each expert; NaN for a category with
    no rows."""
    check_int("num_experts", num_experts, 1)
    check_int("num_categories", num_categories, 1)
    counts = torch.zeros(num_categories, num_experts, dtype=torch.float64)
    counts.index_put_((category.long().cpu(), experts.long().cpu()),
                      torch.ones(experts.shape[0], dtype=torch.float64), accumulate=True)
    return counts / counts.sum(1, keepdim=True)                              # 0/0 → NaN


def switch_rate(experts: torch.Tensor, trajectory: torch.Tensor, step: torch.Tensor) -> float:
    """Mean over trajectories of the fraction of transitions that switch expert (NaN if no
    trajectory has two consecutive steps)."""
    before, after = transitions(trajectory, step)
    if before.numel() == 0:
        return math.nan
    switched = (experts[after] != experts[before]).double().cpu()
    traj = trajectory[after].long().cpu()
    ids, inverse = torch.unique(traj, return_inverse=True)
    per = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, switched)
    n = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(switched))
    return float((per / n).mean())


def router_entropy(q: torch.Tensor) -> float:
    """``mean_n −Σ_e q log q`` in nats (0 log 0 = 0)."""
    q = q.detach().double()
    return float(-(torch.where(q > 0, q * q.clamp_min(1e-300).log(), 0.0)).sum(-1).mean())


def category_shares(category: torch.Tensor, num_categories: int,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) each category's share ``Σ_{n ∈ c} w_n / Σ_n w_n`` of one batch (``weight=None``:
    ``w_n = 1``, row counts). All zero when the total weight is 0."""
    check_int("num_categories", num_categories, 1)
    w = torch.ones(category.shape[0], dtype=torch.float64) if weight is None \
        else weight.detach().double().abs().cpu()
    totals = torch.zeros(num_categories, dtype=torch.float64).index_add_(
        0, category.long().cpu(), w)
    total = totals.sum()
    return totals / total if total > 0 else totals


def parameter_occupancy(shares: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(C,) fraction of batches (rows of ``shares`` (B, C)) where the category's share exceeds
    ``threshold`` (0.5: the Figure 1 caption's "> 50% of the batch")."""
    check_number("threshold", threshold, 0.0, 1.0)
    if shares.dim() != 2 or shares.shape[0] == 0:
        raise ValueError(f"shares: expected a non-empty (batches, categories) tensor, got "
                         f"{tuple(shares.shape)}")
    return (shares.double() > threshold).double().mean(0)                   # mean_b 1[s > 0.5]


def router_metrics(q: torch.Tensor, experts: torch.Tensor, trajectory: torch.Tensor,
                   step: torch.Tensor, temperature: float,
                   category: torch.Tensor | None = None,
                   category_names: tuple[str, ...] = ()) -> dict[str, float]:
    """The scalars to log per iteration: ``router/entropy``, ``router/temperature``,
    ``router/switch_rate``, ``router/usage/expert_<e>`` and, with categories,
    ``router/usage/<category>/expert_<e>``."""
    out = {"router/entropy": router_entropy(q), "router/temperature": float(temperature),
           "router/switch_rate": switch_rate(experts, trajectory, step)}
    e = q.shape[-1]
    overall = torch.bincount(experts.long().cpu(), minlength=e).double() / max(len(experts), 1)
    out.update({f"router/usage/expert_{i}": float(overall[i]) for i in range(e)})
    if category is not None:
        names = category_names or tuple(str(c) for c in range(int(category.max()) + 1))
        usage = expert_usage(experts, category, e, len(names))
        for c, name in enumerate(names):
            if not bool(torch.isnan(usage[c]).any()):
                out.update({f"router/usage/{name}/expert_{i}": float(usage[c, i])
                            for i in range(e)})
    return out
