"""Router losses of PA-MoE (spec-seed-systems §3.3): the joint (expert, response) log-prob for
the importance ratio, the router policy-gradient term, the switching penalty and load balance.

The expert choice is a latent action taken with the response (spec §3.3)::

    log π(e_t, y_t | s_t) = log q_t(e_t) + Σ_tokens log π_{e_t}(y | s_t)        joint log-prob
    ratio = exp(Δ log q(e) + Δ token log-prob)                                    joint ratio

so the router learns through the policy loss's ratio with the same step advantage A_t.
:func:`joint_token_logprobs` puts ``log q(e)`` into the (N, T) token log-probs every grouprl
policy loss takes: on every response token (``"broadcast"``, default: each token ratio is
``q_new/q_old · π_new/π_old``, the literal reading of the spec) or on the first response token
only (``"first"``: the factorisation ``p(e) Π_t p(y_t | e, y_<t)``; the row's summed log-prob
equals the joint log-prob). Use the same placement for the stored old log-probs and the new ones.

Auxiliary losses, averaged and added to the actor loss::

    switching:     λ_sw · mean_{transitions t−1→t} ½‖q_t − q_{t−1}‖₁        (form "tv", λ_sw = 0.1)
                   λ_sw · mean (1 − ⟨q_t, q_{t−1}⟩)                            (form "overlap")
    load balance:  λ_lb · mean_e (q̄_e − 1/E)²,  q̄ = mean of q over rows       (λ_lb = 0.01) [CODE]
"""

from __future__ import annotations

import torch

from grouprl.validation import check_choice, check_number

from .options import JOINT_PLACEMENTS, SWITCH_FORMS
from .routing import transitions

__all__ = ["joint_logprob", "joint_token_logprobs", "router_pg_loss", "switching_penalty",
           "load_balance_loss", "router_aux_loss"]


def _check_rows(token_logp: torch.Tensor, mask: torch.Tensor, expert_logp: torch.Tensor) -> None:
    if token_logp.dim() != 2 or mask.shape != token_logp.shape:
        raise ValueError(f"token_logp, mask: expected two (N, T) tensors of one shape, got "
                         f"{tuple(token_logp.shape)} and {tuple(mask.shape)}")
    if expert_logp.shape != token_logp.shape[:1]:
        raise ValueError(f"expert_logp: expected shape ({token_logp.shape[0]},), got "
                         f"{tuple(expert_logp.shape)}")


def joint_logprob(token_logp: torch.Tensor, mask: torch.Tensor,
                  expert_logp: torch.Tensor) -> torch.Tensor:
    """(N,) ``log q(e) + Σ_t m_t ℓ_t``: the joint log-prob of (expert, response) per row."""
    _check_rows(token_logp, mask, expert_logp)
    dt = torch.promote_types(token_logp.dtype, torch.float32)
    summed = torch.where(mask.bool(), token_logp.to(dt), 0.0).sum(-1)
    return expert_logp.to(dt) + summed


def joint_token_logprobs(token_logp: torch.Tensor, mask: torch.Tensor, expert_logp: torch.Tensor,
                         placement: str = "broadcast") -> torch.Tensor:
    """(N, T) token log-probs with ``log q(e)`` added on every response token (``"broadcast"``)
    or on the first one (``"first"``); padding keeps its value. Feed the result, for both the
    new and the stored old log-probs, to any grouprl policy loss."""
    _check_rows(token_logp, mask, expert_logp)
    check_choice("placement", placement, JOINT_PLACEMENTS)
    m = mask.bool()
    where = m if placement == "broadcast" else m & (m.cumsum(-1) == 1)     # first real token
    dt = torch.promote_types(token_logp.dtype, torch.float32)
    lp = token_logp.to(dt)
    return torch.where(where, lp + expert_logp.to(dt)[:, None], lp)


def router_pg_loss(expert_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``−mean_n A_n · log q(e_n)``: the router's policy-gradient term (its gradient is the joint
    ratio's router gradient at θ_old, ratio 1). Spec §3.5 check 2: 0.0310556."""
    if expert_logp.shape != advantages.shape or expert_logp.dim() != 1:
        raise ValueError(f"expert_logp, advantages: expected two (N,) tensors, got "
                         f"{tuple(expert_logp.shape)} and {tuple(advantages.shape)}")
    return -(advantages.detach().to(expert_logp.dtype) * expert_logp).mean()


def switching_penalty(q: torch.Tensor, trajectory: torch.Tensor, step: torch.Tensor,
                      form: str = "tv") -> torch.Tensor:
    """Mean over transitions t−1 → t (:func:`grouprl.moe.routing.transitions`) of
    ``½‖q_t − q_{t−1}‖₁`` (``"tv"``) or ``1 − ⟨q_t, q_{t−1}⟩`` (``"overlap"``); 0 if none.
    Unweighted: multiply by λ_sw (or use :func:`router_aux_loss`)."""
    check_choice("form", form, SWITCH_FORMS)
    before, after = transitions(trajectory, step)
    if before.numel() == 0:
        return q.sum() * 0.0
    q_prev, q_next = q[before], q[after]
    if form == "tv":
        per = 0.5 * (q_next - q_prev).abs().sum(-1)                          # ½‖q_t − q_{t−1}‖₁
    else:
        per = 1.0 - (q_next * q_prev).sum(-1)                                # 1 − ⟨q_t, q_{t−1}⟩
    return per.mean()


def load_balance_loss(q: torch.Tensor) -> torch.Tensor:
    """``mean_e (q̄_e − 1/E)²`` with ``q̄`` the mean of q (N, E) over rows (unweighted)."""
    if q.dim() != 2 or q.shape[0] == 0:
        raise ValueError(f"q: expected a non-empty (N, E) tensor, got {tuple(q.shape)}")
    q_bar = q.mean(0)
    return ((q_bar - 1.0 / q.shape[1]) ** 2).mean()                          # mean_e (q̄_e − 1/E)²


def router_aux_loss(q: torch.Tensor, trajectory: torch.Tensor, step: torch.Tensor, *,
                    switch_coef: float = 0.1, load_balance_coef: float = 0.01,
                    switch_form: str = "tv") -> tuple[torch.Tensor, dict[str, float]]:
    """``λ_sw · switching + λ_lb · load balance`` and the two unweighted terms as metrics
    (``router/switch_penalty``, ``router/load_balance``)."""
    check_number("switch_coef", switch_coef, 0.0)
    check_number("load_balance_coef", load_balance_coef, 0.0)
    switch = switching_penalty(q, trajectory, step, switch_form)
    balance = load_balance_loss(q)
    total = switch_coef * switch + load_balance_coef * balance
    return total, {"router/switch_penalty": float(switch.detach()),
                   "router/load_balance": float(balance.detach())}
