"""Discounted step returns per trajectory, and the token broadcast of per-row advantages.

GiGPO Eq. 5 (arXiv 2505.10978): ``R_t = Σ_{k≥t} γ^{k−t} r_k`` over the trajectory's own steps,
i.e. ``R_t = r_t + γ·R_{t+1}`` with ``R_T = 0``. The released code recomputes it with a per-row
``np.where`` (O(N²)); here it is a segmented doubling scan over the rows sorted by (trajectory,
step): ⌈log2 T⌉ vector passes, only positive powers of γ, float64.
"""

from __future__ import annotations

import torch

from grouprl.batch import RolloutBatch
from grouprl.validation import check_number

from .rows import Rows, prepare_rows

__all__ = ["discounted_returns", "step_returns", "broadcast_to_tokens"]


def step_returns(rows: Rows, gamma: float) -> torch.Tensor:
    """``R_i`` for every row of a prepared batch (float64, input row order)."""
    reward = rows.reward[rows.order]
    remaining = rows.remaining[rows.order]
    total = reward.clone()
    offset, discount = 1, float(gamma)
    longest = int(remaining.max()) if rows.n else 0
    # Invariant: after the pass with offset o, total[j] = Σ_{k=j}^{min(j+2o−1, end)} γ^{k−j} r_k.
    while offset <= longest:
        ahead = torch.zeros_like(total)
        ahead[:-offset] = total[offset:]
        total = total + torch.where(remaining >= offset, discount * ahead, 0.0)
        offset, discount = offset * 2, discount * discount
    out = torch.empty_like(total)
    out[rows.order] = total
    return out


def discounted_returns(traj_id, step, reward, gamma: float) -> torch.Tensor:
    """Discounted return ``R_t = Σ_{k≥t} γ^{k−t} r_k`` of every row, in input order (float32).

    ``traj_id``/``step``/``reward`` are 1-D columns as in :class:`grouprl.advantages.RolloutBatch`
    (steps 0..T-1 contiguous per trajectory; rows in any order).
    """
    check_number("gamma", gamma, 0.0, 1.0)
    rows = prepare_rows(RolloutBatch(group_id=traj_id, traj_id=traj_id, step=step, reward=reward))
    return step_returns(rows, gamma).to(torch.float32)


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-row advantages ``[N]`` → token advantages ``[N, T]``: ``A[i, t] = A_i · mask[i, t]``."""
    if advantages.dim() != 1:
        raise ValueError(f"advantages: expected shape [N], got {tuple(advantages.shape)}")
    if response_mask.dim() != 2 or response_mask.shape[0] != advantages.shape[0]:
        raise ValueError(f"response_mask: expected shape [{advantages.shape[0]}, T], got "
                         f"{tuple(response_mask.shape)}")
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)
