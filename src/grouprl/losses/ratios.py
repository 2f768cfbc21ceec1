"""Ratio builders (spec-losses §0, §1.4, §3.1–3.2, §8).

* :func:`token_log_ratio`: ``δ_{i,t} = ℓ^θ_{i,t} − ℓ^old_{i,t}``, clamped to ±20 (verl; §1.4).
* :func:`sequence_log_ratio`: GSPO's length-normalised ``log s_i = (1/L_i) Σ_t m δ`` (§3.1).
* :func:`straight_through_log_ratio`: GSPO-token's ``ℓ^θ − sg(ℓ^θ) + sg(log s_i)`` (§3.2).
* :func:`rollout_is_weights`: truncated / masked importance sampling between the training engine
  at θ_old and the inference engine, token or sequence level (§8).

Every builder works in fp32 (fp64 stays fp64; bf16 and fp16 are upcast) and masks with
``torch.where`` before any arithmetic, so NaN or inf in padded positions never reaches a value
or a gradient. The KPO Kalman-filtered ratio (§4) lives in :mod:`grouprl.losses.kpo`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .aggregate import bool_mask

__all__ = ["LOG_RATIO_CLAMP", "compute_dtype", "masked", "token_log_ratio", "sequence_log_ratio",
           "straight_through_log_ratio", "ISWeights", "rollout_is_weights"]

LOG_RATIO_CLAMP = 20.0  # verl's bound on δ before exp (core_algos, §1.4); e^20 ≈ 4.9e8


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or ``x``'s dtype when wider (fp64): ratios are never formed in bf16/fp16 (§1.4)."""
    return torch.promote_types(x.dtype, torch.float32)


def masked(x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` cast to ``dtype`` with every position where ``mask`` is 0/False replaced by 0."""
    return torch.where(bool_mask(mask), x.to(dtype or compute_dtype(x)), 0.0)


def token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                    clamp: float | None = LOG_RATIO_CLAMP) -> torch.Tensor:
    """Per-token log-ratio ``δ = clamp(ℓ^θ − sg(ℓ^old), −c, c)``, 0 on padding (§0, §1.4).

    ``clamp=None`` disables the bound (TRL). ``old_logp`` is detached: it is a constant.
    """
    dt = compute_dtype(logp)
    # One where on the difference: its backward is where(m, grad, 0) and the subtraction's is the
    # identity, so NaN/inf padding reaches neither the value nor the gradient.
    delta = torch.where(bool_mask(mask), logp.to(dt) - old_logp.detach().to(dt), 0.0)  # δ
    return delta if clamp is None else delta.clamp(-clamp, clamp)


def sequence_log_ratio(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO: ``log s_i = (1/L_i) Σ_t m_{i,t} δ_{i,t}`` (Zheng et al. 2025, §3.1), 0 if ``L_i = 0``.

    Returns (N,). Its gradient w.r.t. ``ℓ^θ_{i,t}`` is ``1/L_i``.
    """
    m = bool_mask(mask)
    lengths = m.sum(-1).clamp(min=1).to(delta.dtype)
    return torch.where(m, delta, 0.0).sum(-1) / lengths                    # (1/L_i) Σ_t m δ


def straight_through_log_ratio(logp: torch.Tensor, seq_log_ratio: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token: ``log s_{i,t} = ℓ^θ_{i,t} − sg(ℓ^θ_{i,t}) + sg(log s_i)`` (§3.2, verl ``gspo``).

    Value ``log s_i`` on every token of row i; gradient ``∇ℓ^θ_{i,t}`` (token t only). Returns
    (N, T) in fp32 or wider.
    """
    lp = masked(logp, mask)
    return lp - lp.detach() + seq_log_ratio.detach().to(lp.dtype)[:, None]


class ISWeights(NamedTuple):
    """Rollout-correction weights (all detached, zero on padding).

    Attributes:
        weight: (N, T) ``ρ̂``, the factor that multiplies the per-token loss.
        log_rho: (N, T) per-token ``log ρ = ℓ^old − ℓ^roll`` (clamped as the ratio is).
        modified: (N, T) bool, tokens whose weight was truncated or masked to 0.
    """

    weight: torch.Tensor
    log_rho: torch.Tensor
    modified: torch.Tensor


def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *,
                       level: str = "token", mode: str = "truncate", threshold: float = 2.0,
                       threshold_lower: float | None = None, batch_normalize: bool = False,
                       clamp: float | None = LOG_RATIO_CLAMP) -> ISWeights:
    """Truncated / masked IS weights for the rollout-vs-training mismatch (§8).

    ``ρ_{i,t} = exp(ℓ^old_{i,t} − ℓ^roll_{i,t})``, a constant (detached), 0 on padding.

    * ``level="token"``, ``mode="truncate"`` (Token-TIS): ``ρ̂ = min(ρ_{i,t}, C)``.
    * ``level="sequence"``, ``mode="truncate"`` (Seq-TIS): ``ρ̂_i = min(exp Σ_t m log ρ, C)``,
      the product over tokens (not the length mean), broadcast to the row.
    * ``mode="mask"`` (Token/Seq-MIS, IcePop): ``ρ̂ = ρ·1[C_min ≤ ρ ≤ C_max]``.

    ``threshold`` is ``C`` / ``C_max`` (verl ``rollout_is_threshold=2.0``, the TIS blog's C=2;
    TRL's ``vllm_importance_sampling_clip_max`` defaults to 3.0). ``threshold_lower`` is
    ``C_min``: no lower bound when None (TRL ``clip_min=None``); under "truncate" a given lower
    bound also clamps from below as TRL ``token_truncate`` does. Bounds are applied in log space,
    so no weight overflows. A NaN rollout log-prob on a real token gives ``ρ = 1`` (TRL). The
    log-ratio (and for "sequence" the row sum) is clamped to ±``clamp`` (verl ``SAFETY_BOUND``).
    ``batch_normalize`` rescales to mean 1 over this batch's tokens ("token") or non-empty rows
    ("sequence") (verl ``rollout_is_batch_normalize``); it is local to the call, so compute the
    weights once per mini-batch if micro-batch invariance matters.
    """
    m = bool_mask(mask)
    dt = compute_dtype(old_logp)
    log_rho = (masked(old_logp, m, dt) - masked(rollout_logp, m, dt)).detach()
    log_rho = torch.where(torch.isnan(log_rho), 0.0, log_rho)            # NaN ℓ^roll → ρ = 1
    if clamp is not None:
        log_rho = log_rho.clamp(-clamp, clamp)
    if level == "sequence":
        log_w = log_rho.sum(-1, keepdim=True)                             # log Π_t ρ_{i,t}
        log_w = (log_w if clamp is None else log_w.clamp(-clamp, clamp)).expand_as(log_rho)
    else:
        log_w = log_rho
    hi = math.log(threshold)
    lo = -math.inf if threshold_lower is None else math.log(threshold_lower)
    if mode == "truncate":
        weight = torch.exp(log_w.clamp(lo, hi))                           # min(max(ρ, C_min), C)
        modified = (log_w > hi) | (log_w < lo)
    else:
        keep = (log_w >= lo) & (log_w <= hi)
        weight = torch.where(keep, torch.exp(torch.where(keep, log_w, 0.0)), 0.0)  # ρ·1[in]
        modified = ~keep
    weight = torch.where(m, weight, 0.0)
    modified = modified & m
    if batch_normalize:
        if level == "sequence":
            rows = m.any(-1)
            mean = torch.where(rows, weight.amax(-1), 0.0).sum() / rows.sum().clamp(min=1)
        else:
            mean = weight.sum() / m.sum().clamp(min=1)
        weight = weight / torch.where(mean > 0, mean, 1.0)
    return ISWeights(weight.detach(), log_rho, modified)
