"""CANON: conditional advantage estimation over metric halves (Chen et al. 2025, arXiv 2509.23962).

Spec §A10; the released ``compute_dr_length_on_mean_group_outcome_advantage`` and its entropy
variant (biuboomc/CANON). Each group's trajectories are sorted by a target metric (response
length, or mean per-token generation entropy) and split into a lower half C⁻ (the first ⌊G/2⌋)
and an upper half C⁺ (the rest); each response is compared with the *other* half's mean reward
(inter) and with its own half's (intra).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grouprl.validation import check_choice, check_number

from .options import CommonOptions
from .outcome import row_scores
from .rows import Rows
from .segments import segment_stats, segment_sum

__all__ = ["CANONOptions", "canon"]

DIRECTIONS = ("length", "entropy")


@dataclass(frozen=True)
class CANONOptions(CommonOptions):
    """CANON options (spec §A10; defaults from the released code and ``scripts/setups.sh``).

    Attributes:
        metric: per-row target metric m_i (tensor [N]), required: the response length in
            tokens (``direction="length"``) or the mean per-token generation entropy from the
            old-log-prob pass (``direction="entropy"``). A multi-step trajectory's metric is the
            sum of its rows' values for "length" and their mean for "entropy".
        mu_w: μ_w, weight of the inter-half term (1.0: pure inter, the code default; 0.5 with an
            even G reproduces Dr. GRPO exactly; 0: pure intra). Schedules over iterations
            (first-inter-later-intra, cosine restarts) are the caller's: pass a new value.
        alpha: α, the directional prior on the reward (1.0): "length" multiplies the C⁺ reward
            and the C⁻ baseline, "entropy" the other way round.
        beta: β, the directional offset (0.0): +β in C⁺, −β in C⁻.
        direction: "length" (default) or "entropy": which side α multiplies (the two released
            variants).
        l_max: L_max, the constant divisor of Dr. GRPO's ``seq-mean-token-sum`` scaling (8192,
            the released max response length).
    """

    metric: torch.Tensor | None = None
    mu_w: float = 1.0
    alpha: float = 1.0
    beta: float = 0.0
    direction: str = "length"
    l_max: float = 8192.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric is None:
            raise ValueError("metric: required by 'canon'; pass metric=<tensor [N]> holding each "
                             "row's response length (direction='length') or mean token entropy "
                             "(direction='entropy')")
        try:
            metric = torch.as_tensor(self.metric)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"metric: cannot convert to a tensor ({err})") from None
        if metric.dim() != 1 or not bool(torch.isfinite(metric.to(torch.float64)).all()):
            raise ValueError("metric: must be a 1-D tensor of finite values, one per row")
        check_number("mu_w", self.mu_w, 0.0, 1.0)
        check_number("alpha", self.alpha)
        check_number("beta", self.beta)
        check_choice("direction", self.direction, DIRECTIONS)
        check_number("l_max", self.l_max, 0.0, low_open=True)


def canon(rows: Rows, opts: CANONOptions) -> torch.Tensor:
    """CANON advantage per row, float64 [N] in input row order.

    Per group, trajectories sorted by metric (ties keep input-row order), C⁻ = the first
    ⌊G/2⌋, C⁺ = the rest, μ⁻ / μ⁺ the halves' mean rewards::

        length:   inter = α·r − μ⁻ + β  (C⁺)        r − α·μ⁺ − β  (C⁻)
        entropy:  inter = r − α·μ⁻ + β  (C⁺)        α·r − μ⁺ − β  (C⁻)
        intra     =       r − μ⁺        (C⁺)        r − μ⁻        (C⁻)
        A         = [μ_w · inter + (1 − μ_w) · intra] / L_max

    The sort is one lexsort on (group, metric, first row); the half means are segment means over
    (group, half) codes. Rewards follow Dr. GRPO (``dr_grpo``): "native" compares trajectory
    returns and keeps each row's own score (invalid penalty on the invalid row), snaps a half
    whose rewards are all equal to that value exactly, and gives a group of one trajectory
    A = 0 (nothing to compare with). "reference" uses each trajectory's mean row score and the
    released code's singleton rule (μ⁻ = μ⁺ = 0, the lone response in C⁺). With α = 1, β = 0,
    μ_w = 0.5 and even G both equal ``dr_grpo / L_max`` (spec §C7).
    """
    metric = torch.as_tensor(opts.metric).detach().cpu().to(torch.float64).reshape(-1)
    if metric.numel() != rows.n:
        raise ValueError(f"metric: has {metric.numel()} rows, the batch has {rows.n}")
    score = row_scores(rows, opts.invalid_penalty)
    ntraj, ngroup = rows.num_trajs, rows.num_groups
    per_traj = segment_sum(metric, rows.traj, ntraj)
    if opts.direction == "entropy":
        per_traj = per_traj / rows.traj_len.to(torch.float64)
    if opts.compat == "reference":
        sample = segment_sum(score, rows.traj, ntraj) / rows.traj_len.to(torch.float64)
        value = sample[rows.traj]
    else:
        sample, value = rows.traj_return, score

    # Rank of each trajectory within its group by metric, ties in input-row order (as Python's
    # stable ``sorted`` over the batch in the released code): three stable argsorts = a lexsort
    # on (group, metric, first row).
    tg = rows.traj_group
    by_row = torch.argsort(rows.traj_first_row)
    by_metric = by_row[torch.argsort(per_traj[by_row], stable=True)]
    order = by_metric[torch.argsort(tg[by_metric], stable=True)]
    size = torch.bincount(tg, minlength=ngroup)
    start = torch.cumsum(size, 0) - size
    rank = torch.empty(ntraj, dtype=torch.int64)
    rank[order] = torch.arange(ntraj) - start[tg[order]]
    upper_traj = rank >= torch.div(size, 2, rounding_mode="floor")[tg]

    half_code = tg * 2 + upper_traj.to(torch.int64)   # (group, half) ids: 2g (C⁻), 2g + 1 (C⁺)
    stats = segment_stats(sample, half_code, 2 * ngroup, unbiased=False)
    mean = torch.where(stats.constant, stats.low, stats.mean)
    # A group of one trajectory ("reference": μ⁻ = μ⁺ = 0; "native": A = 0 below).
    mean = torch.where((size == 1).repeat_interleave(2), torch.zeros_like(mean), mean)
    mu_lo, mu_hi = mean[0::2][rows.group], mean[1::2][rows.group]

    upper = upper_traj[rows.traj]
    a, b, w = opts.alpha, opts.beta, opts.mu_w
    if opts.direction == "length":
        inter = torch.where(upper, a * value - mu_lo + b, value - a * mu_hi - b)
    else:
        inter = torch.where(upper, value - a * mu_lo + b, a * value - mu_hi - b)
    intra = torch.where(upper, value - mu_hi, value - mu_lo)
    adv = (w * inter + (1.0 - w) * intra) / opts.l_max
    if opts.compat == "native":
        adv = torch.where(size[rows.group] == 1, torch.zeros_like(adv), adv)
    return adv
