"""Outcome-level group estimators: GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline, Dr. MAS agent-wise.

Every row of a trajectory gets its trajectory's outcome advantage; the invalid-action penalty c is
subtracted from the row's own score only (verl-agent ``apply_invalid_action_penalty``):
``score_i = ret_τ(i) − c·invalid_i`` with ``ret_τ = Σ_t r_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grouprl.validation import check_bool, check_choice

from .options import MODES, CommonOptions
from .rows import Rows
from .segments import group_normalize, pair_codes, segment_stats, segment_sum

__all__ = ["GRPOOptions", "DrGRPOOptions", "RLOOOptions", "ReinforcePPOptions", "grpo",
           "dr_grpo", "rloo", "reinforce_pp", "row_scores"]


def row_scores(rows: Rows, invalid_penalty: float) -> torch.Tensor:
    """``score_i = ret_τ(i) − c·invalid_i``: the episode score each row carries (float64)."""
    return rows.traj_return[rows.traj] - invalid_penalty * rows.invalid


@dataclass(frozen=True)
class GRPOOptions(CommonOptions):
    """GRPO (Shao et al. 2024, arXiv 2402.03300 §4.1.2) and Dr. MAS agent-wise normalisation.

    Attributes:
        mode: "mean_std_norm" (A = (s − μ)/(σ + ε), default) or "mean_norm" (A = s − μ, Dr. GRPO).
        by_agent: Dr. MAS (arXiv 2602.08847 §3, spec §7.3): statistics per (group, agent) over
            every invocation row of that agent, ``A = (s − μ_k)/(σ_k + ε)``. Needs ``agent_id``.
    """

    mode: str = "mean_std_norm"
    by_agent: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        check_bool("by_agent", self.by_agent)


@dataclass(frozen=True)
class DrGRPOOptions(CommonOptions):
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783 §3.1): GRPO without the std division.

    Attributes:
        by_agent: group by (group, agent) as Dr. MAS; needs ``agent_id``.
    """

    by_agent: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("by_agent", self.by_agent)


def require(rows: Rows, field: str, column: str, estimator: str, why: str = "") -> torch.Tensor:
    value = getattr(rows, field)
    if value is None:
        raise ValueError(f"{column}: column is missing (needed by {estimator!r}{why}); pass "
                         f"{column}=... to RolloutBatch")
    return value


def grpo(rows: Rows, opts: GRPOOptions, *, name: str = "grpo") -> torch.Tensor:
    """GRPO: ``A_i = (s_i − mean(S_g)) / (std(S_g) + ε)`` over the sample ``S_g`` of group g.

    Sample (unbiased std, as ``torch.std``):

    - ``by_agent=True`` (Dr. MAS, both compats): every row of agent k in group g, each with its
      own score; a singleton keeps its raw score under "reference".
    - "reference" (Dr. MAS / verl-agent vanilla GRPO): each trajectory once, valued at the mean of
      its rows' scores, and every row takes that trajectory value (the penalty is averaged over
      the trajectory); a single-trajectory group keeps the raw value (μ = 0, σ = 1).
    - "native": each trajectory once with its episode return (the paper's outcome reward); the
      row value is the row's own score, so the invalid penalty stays on the invalid row. A group
      whose returns are all equal gets exactly ``s − μ`` (0 for valid rows): no std division.
    """
    mode = getattr(opts, "mode", "mean_norm")
    kw = dict(mode=mode, epsilon=opts.epsilon, compat=opts.compat, singleton="raw")
    score = row_scores(rows, opts.invalid_penalty)
    if opts.by_agent:
        agent = require(rows, "agent", "agent_id", name, " with by_agent=True")
        key, num = pair_codes(rows.group, agent, rows.num_agents)
        return group_normalize(score, key, segment_stats(score, key, num, unbiased=True), **kw)
    if opts.compat == "reference":
        traj_value = segment_sum(score, rows.traj, rows.num_trajs) / rows.traj_len
        stats = segment_stats(traj_value, rows.traj_group, rows.num_groups, unbiased=True)
        return group_normalize(traj_value[rows.traj], rows.group, stats, **kw)
    stats = segment_stats(rows.traj_return, rows.traj_group, rows.num_groups, unbiased=True)
    return group_normalize(score, rows.group, stats, **kw)


def dr_grpo(rows: Rows, opts: DrGRPOOptions) -> torch.Tensor:
    """Dr. GRPO: ``A_i = s_i − mean(S_g)`` (GRPO with ``mode="mean_norm"``)."""
    return grpo(rows, opts, name="dr_grpo")


@dataclass(frozen=True)
class RLOOOptions(CommonOptions):
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740 §3.2): leave-one-out baseline; no options."""


def _outcome_baseline(rows: Rows, opts: CommonOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row group mean of the trajectory sample, and the group's trajectory count.

    "reference" (verl-agent dedup): each trajectory's step-0 row score, singleton μ = 0.
    "native": each trajectory's return, μ snapped to the common value when all are equal.
    """
    if opts.compat == "reference":
        sample = rows.traj_return - opts.invalid_penalty * rows.invalid[rows.traj_first_row]
    else:
        sample = rows.traj_return
    stats = segment_stats(sample, rows.traj_group, rows.num_groups, unbiased=True)
    mean = stats.mean
    if opts.compat == "native":
        mean = torch.where(stats.constant, stats.low, mean)
    else:
        mean = torch.where(stats.count == 1, torch.zeros_like(mean), mean)
    return mean[rows.group], stats.count[rows.group]


def rloo(rows: Rows, opts: RLOOOptions) -> torch.Tensor:
    """RLOO: ``A_i = s_i − mean_{j≠τ(i)} ret_j = n/(n−1) · (s_i − mean_g)``.

    A group of one trajectory has no leave-one-out baseline: "reference" keeps the raw score
    (verl), "native" gives 0.
    """
    score = row_scores(rows, opts.invalid_penalty)
    mean, n = _outcome_baseline(rows, opts)
    loo = n / (n - 1.0).clamp_min(1.0) * (score - mean)
    alone = score if opts.compat == "reference" else torch.zeros_like(score)
    return torch.where(n > 1, loo, alone)


@dataclass(frozen=True)
class ReinforcePPOptions(CommonOptions):
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262 §3): group mean, then batch whitening.

    Attributes:
        response_length: optional per-row token counts (tensor [N]). verl whitens over all
            response *tokens* (``masked_whiten``), so a row weighs its length; without it every
            row weighs 1.
        comm: data parallel (:class:`grouprl.distributed.Comm`, or any object whose ``sum``,
            ``min`` and ``max`` all-reduce a tensor in place): the whitening statistics are
            then over every rank's rows (spec-scale-out §2); None = this batch alone.
    """

    response_length: torch.Tensor | None = None
    comm: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.response_length is not None:
            length = torch.as_tensor(self.response_length)
            if length.dim() != 1 or not bool((length >= 0).all()):
                raise ValueError("response_length: must be a 1-D tensor of non-negative counts")


def reinforce_pp(rows: Rows, opts: ReinforcePPOptions) -> torch.Tensor:
    """``b_i = s_i − mean_g`` then ``A = (b − m)/sqrt(var + 1e-8)`` over the whole batch.

    ``m`` and ``var`` (unbiased, ``W/(W−1)``) are weighted by ``response_length`` when given
    (verl's token-level whitening). "native": a batch whose b are all equal gets exactly 0.
    """
    score = row_scores(rows, opts.invalid_penalty)
    mean, _ = _outcome_baseline(rows, opts)
    b = score - mean
    if opts.response_length is None:
        w = torch.ones_like(b)
    else:
        w = torch.as_tensor(opts.response_length).to(torch.float64).reshape(-1)
        if w.numel() != rows.n:
            raise ValueError(f"response_length: has {w.numel()} rows, the batch has {rows.n}")
    total, wb = _summed(opts.comm, w.sum(), (w * b).sum())
    m = wb / total.clamp_min(1e-300)
    (squares,) = _summed(opts.comm, (w * (b - m) ** 2).sum())
    var = squares / (total - 1.0) if float(total) > 1.0 else b.new_zeros(())
    adv = (b - m) * torch.rsqrt(var + 1e-8)
    if opts.compat == "native" and _all_equal(opts.comm, b):
        return torch.zeros_like(adv)
    return adv


def _summed(comm: Any, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``values`` summed over the data-parallel ranks (unchanged without ``comm``)."""
    if comm is None or getattr(comm, "world_size", 1) == 1:
        return values
    return tuple(comm.sum(torch.stack(values).to(torch.float64)).unbind())


def _all_equal(comm: Any, b: torch.Tensor) -> bool:
    """Every rank's ``b`` holds one value (and some rank has rows)."""
    if comm is None or getattr(comm, "world_size", 1) == 1:
        return bool(b.numel()) and bool((b == b[0]).all())
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    lo = comm.min(b.min().reshape(1).double() if b.numel() else inf.clone())
    hi = comm.max(b.max().reshape(1).double() if b.numel() else -inf)
    return bool(torch.isfinite(lo).all()) and bool((lo == hi).all())
