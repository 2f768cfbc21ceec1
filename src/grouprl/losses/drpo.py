"""DRPO: Decoupled Reward Policy Optimization (Li, Chen, Lin, Yang; arXiv 2510.04474, ICLR'26).

A sequence-level, group-discriminative loss (built on DisCO) that replaces the advantage-weighted
clipped surrogate; spec-rewards §A9, reference ``Optimization-AI/DRPO`` ``core_algos.
compute_policy_loss_drpo``. Per question ``q`` with positives ``P_q`` (correct) and negatives
``N_q`` (incorrect)::

    s_θ(o) = (1/|o|) Σ_t log π_θ(o_t | q, o_<t)               length-normalised log-likelihood
    w_i    = exp((1 − L_i/L_max)/λ),  w̃_i = w_i / Σ_{k∈P_q} w_k   constants (length reward)
    J_q    = Σ_{i∈P_q} w̃_i s_θ(o_i) − τ·log Σ_{j∈N_q} exp(s_θ(o_j)/τ)
    loss   = −(1/|Q_all|) Σ_{q: |P_q|>0, |N_q|>0} J_q  +  β·sg(max(KL_old − δ, 0))·KL_old
    KL_old = token-mean of (ℓ^old − ℓ^θ)                        (verl ``ppo_kl_type=kl``)

Length only re-weights the positives, so a correct answer never gets a negative signal. ``|Q_all|``
counts every question of the mini-batch, skipped ones (all correct / all wrong) included.

Reference differences (documented, gradient-equivalent):

* the negative term is ``τ·logsumexp(s/τ)`` here; the reference builds it as ``S/sg(S)`` with
  ``S = Σ exp(s/τ − max)``, whose value is the constant 1 (``τ`` in the loss) and whose gradient
  equals that of ``log S``. Loss *values* therefore differ from the reference's; gradients agree.
* the reference takes ``L_max`` = the padded response width (``eos_mask.size(-1)``, 8192 in its
  run script); here it is an explicit argument (the trainer passes ``max_new_tokens``).
* the reference all-gathers one *micro-batch* across ranks and normalises by its distinct uids;
  with its run script (4 rows per GPU micro-batch, 8 responses per question) a group is split
  across micro-batches. :func:`grouprl.train.learner.update_policy` instead cuts group-aligned
  micro-batches and normalises by the mini-batch question count, so micro-batch losses sum to
  the mini-batch loss (spec: "for each question in the global mini-batch").

Everything is vectorised with segment reductions (``index_add_`` / ``scatter_reduce_``), no Python
loop over rows or groups; pure torch, any device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from grouprl.validation import check_int, check_number, check_options, memoize

__all__ = ["drpo_loss", "drpo_weights", "drpo_options", "DRPO_DEFAULTS", "SEQUENCE_LOSSES"]

SEQUENCE_LOSSES = ("drpo",)
DRPO_DEFAULTS: dict[str, Any] = {"lam": 0.1, "tau": 10.0, "beta": 1e3, "delta": 1e-4,
                                 "l_max": None}


@memoize
def _validate_weights(lam: float, l_max: float | None, none_ok: bool = False) -> None:
    """λ > 0 and ``L_max`` > 0 (None when ``none_ok``), checked once per distinct values."""
    check_number("lam", lam, 0.0, low_open=True)
    check_number("l_max", l_max, 0.0, low_open=True, none_ok=none_ok)


@memoize
def _validate_loss(lam: float, tau: float, l_max: float | None, beta: float, delta: float,
                   none_ok: bool = False) -> None:
    """The DRPO hyper-parameters, checked once per distinct values (the loss runs per
    micro-batch)."""
    _validate_weights(lam, l_max, none_ok)
    check_number("tau", tau, 0.0, low_open=True)
    check_number("beta", beta, 0.0)
    check_number("delta", delta, 0.0)


def drpo_options(**options: Any) -> dict[str, Any]:
    """Validate DRPO options and fill in the defaults of the paper's run script.

    ``lam=0.1`` (λ, length-reward temperature; ``inf`` is not accepted, DisCO = a very large λ),
    ``tau=10.0`` (τ), ``beta=1e3`` (β), ``delta=1e-4`` (δ, the KL budget), ``l_max=None``
    (``L_max``; None = the rollout's ``max_new_tokens``, i.e. the padded response width as in the
    reference). Unknown names raise ``ValueError`` naming the option.
    """
    check_options("policy loss 'drpo'", options, sorted(DRPO_DEFAULTS))
    o = {**DRPO_DEFAULTS, **options}
    _validate_loss(o["lam"], o["tau"], o["l_max"], o["beta"], o["delta"], none_ok=True)
    return o


def _check_rows(**named: torch.Tensor) -> int:
    n = None
    for key, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 1:
            raise ValueError(f"{key}: must be a 1-D (N,) tensor, got shape {tuple(value.shape)}")
        if n is None:
            n = value.shape[0]
        elif value.shape[0] != n:
            raise ValueError(f"{key}: length {value.shape[0]} differs from {n} (one entry per row)")
    return int(n or 0)


def _segments(group: torch.Tensor) -> tuple[torch.Tensor, int]:
    if group.dtype.is_floating_point or group.dtype == torch.bool:
        raise ValueError(f"group: must be an integer tensor of group ids, got {group.dtype}")
    uniq, seg = torch.unique(group, return_inverse=True)
    return seg, int(uniq.numel())


def _segment_sum(values: torch.Tensor, seg: torch.Tensor, num: int) -> torch.Tensor:
    return values.new_zeros(num).index_add(0, seg, values)


def _segment_max(values: torch.Tensor, seg: torch.Tensor, num: int,
                 keep: torch.Tensor) -> torch.Tensor:
    """``max`` over the kept entries of each segment; 0 for a segment with none (detached)."""
    v = torch.where(keep, values.detach(), -math.inf)
    out = torch.full((num,), -math.inf, dtype=v.dtype, device=v.device)
    out = out.scatter_reduce(0, seg, v, "amax")
    return torch.where(torch.isfinite(out), out, 0.0)


def _segment_softmax(x: torch.Tensor, seg: torch.Tensor, num: int,
                                 keep: torch.Tensor) -> torch.Tensor:
    """``softmax(x)`` over the kept entries of each segment (0 elsewhere), max-shifted."""
    shifted = torch.where(keep, x - _segment_max(x, seg, num, keep)[seg], 0.0)
    e = torch.where(keep, torch.exp(shifted), 0.0)
    total = _segment_sum(e, seg, num)
    return torch.where(keep, e / total.clamp_min(torch.finfo(e.dtype).tiny)[seg], 0.0)


def _as_bool(name: str, value: torch.Tensor) -> torch.Tensor:
    if value.dtype == torch.bool:
        return value
    if not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"{name}: must be bool or 0/1 (binary rewards: 1 = correct)")
    return value != 0


def drpo_weights(length: torch.Tensor, positive: torch.Tensor, group: torch.Tensor, *,
                 lam: float = 0.1, l_max: float) -> torch.Tensor:
    """Normalised length weights ``w̃`` (N,), float64: 0 on negatives, summing to 1 over the
    positives of every group that has any.

    ``w_i = exp((1 − L_i/L_max)/λ)``; ``w̃_i = w_i / Σ_{k∈P_q} w_k``, computed as a softmax of
    ``(1 − L/L_max)/λ`` within the group's positives (stable for small λ). Spec vector:
    ``L = [100, 300]``, ``L_max = 8192``, ``λ = 0.1`` → ``[0.5607, 0.4393]``.
    """
    _validate_weights(lam, l_max)
    _check_rows(length=length, positive=positive, group=group)
    seg, num = _segments(group)
    pos = _as_bool("positive", positive)
    x = (1.0 - length.detach().to(torch.float64) / float(l_max)) / float(lam)  # log w_i
    return _segment_softmax(x, seg, num, pos)


def drpo_loss(seq_score: torch.Tensor, correct: torch.Tensor, length: torch.Tensor,
              group: torch.Tensor, *, lam: float = 0.1, tau: float = 10.0, l_max: float,
              num_questions: int | None = None, kl_old: torch.Tensor | None = None,
              kl_hinge: float | torch.Tensor | None = None, beta: float = 1e3,
              delta: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """DRPO loss of one call (module docstring) and its metrics.

    Args:
        seq_score: (N,) ``s_θ(o)``, the token mean of ``ℓ^θ`` over each response, with gradient.
        correct: (N,) bool (or 0/1): positive (r = 1) or negative (r = 0).
        length: (N,) response lengths ``L_i`` in tokens (constants).
        group: (N,) int question ids; every response of a question must be in the call.
        lam, tau: λ = 0.1 and τ = 10 (run script).
        l_max: ``L_max`` (the reference's padded width, 8192 in its run script).
        num_questions: ``|Q_all|``, all questions of the mini-batch, skipped ones included
            (default: the number of distinct ids in ``group``; must not be smaller).
        kl_old: 0-d tensor with gradient, ``KL_old`` = token-mean of ``ℓ^old − ℓ^θ`` (or a
            micro-batch's share of the mini-batch token-mean). None: no KL term.
        kl_hinge: the ``KL_old`` value inside the stop-gradient factor ``max(KL_old − δ, 0)``;
            default ``kl_old``'s own value. Pass the whole mini-batch's KL when ``kl_old`` is one
            micro-batch's share, so the micro-batch losses sum to the mini-batch loss.
        beta, delta: β = 1e3, δ = 1e-4 (run script).

    Returns:
        ``(loss, metrics)``; loss is 0-d in ``seq_score``'s dtype. Metrics:
        ``drpo/valid_questions`` (groups with both positives and negatives),
        ``drpo/pos_score`` / ``drpo/neg_score`` (mean ``s_θ`` of the positive / negative rows of
        those groups; NaN when there are none), ``drpo/kl_old`` (``kl_old``'s value, 0 without).
    """
    _validate_loss(lam, tau, l_max, beta, delta)
    n = _check_rows(seq_score=seq_score, correct=correct, length=length, group=group)
    if not seq_score.is_floating_point():
        raise ValueError(f"seq_score: must be a floating tensor, got {seq_score.dtype}")
    seg, num = _segments(group)
    if num_questions is None:
        num_questions = max(num, 1)
    else:
        check_int("num_questions", num_questions, max(num, 1),
                  note=f"the call has {num} distinct group ids")
    pos = _as_bool("correct", correct)
    neg = ~pos
    dt = seq_score.dtype
    n_pos = _segment_sum(pos.to(dt), seg, num)
    n_neg = _segment_sum(neg.to(dt), seg, num)
    valid = (n_pos > 0) & (n_neg > 0)                                   # |P_q| > 0 and |N_q| > 0

    s = torch.where(valid[seg], seq_score, 0.0)                         # skipped rows: no value
    w = drpo_weights(length, pos, group, lam=lam, l_max=l_max).to(dt)   # w̃_i
    pos_term = _segment_sum(torch.where(pos, w * s, 0.0), seg, num)     # Σ_{P_q} w̃_i s_i
    z = s / tau                                                          # s_j / τ
    z_max = _segment_max(z, seg, num, neg)                               # sg(max_{N_q} s/τ)
    e = torch.where(neg, torch.exp(torch.where(neg, z - z_max[seg], 0.0)), 0.0)
    lse = z_max + torch.log(torch.where(n_neg > 0, _segment_sum(e, seg, num), 1.0))
    j_q = torch.where(valid, pos_term - tau * lse, 0.0)                 # J_q (0 if skipped)
    loss = -j_q.sum() / num_questions                                   # −(1/|Q_all|) Σ J_q

    kl_value = 0.0
    if kl_old is not None:
        if not isinstance(kl_old, torch.Tensor) or kl_old.numel() != 1:
            raise ValueError("kl_old: must be a 0-d tensor (token-mean of ℓ^old − ℓ^θ)")
        kl_old = kl_old.reshape(()).to(dt)
        hinge_at = kl_old.detach() if kl_hinge is None else torch.as_tensor(
            kl_hinge, dtype=dt, device=kl_old.device).detach()
        hinge = (hinge_at - delta).clamp_min(0.0)                         # sg(max(KL − δ, 0))
        loss = loss + beta * hinge * kl_old                               # + β·hinge·KL_old
        kl_value = float(kl_old.detach())

    with torch.no_grad():
        rows_valid = valid[seg] if n else valid.new_zeros(0)
        sd = seq_score.detach()
        pos_rows, neg_rows = pos & rows_valid, neg & rows_valid
        metrics = {
            "drpo/valid_questions": float(valid.sum()),
            "drpo/pos_score": float(sd[pos_rows].mean()) if bool(pos_rows.any()) else math.nan,
            "drpo/neg_score": float(sd[neg_rows].mean()) if bool(neg_rows.any()) else math.nan,
            "drpo/kl_old": kl_value,
        }
    return loss, metrics
