"""Routing math of the phase router (spec-seed-systems §3.3): temperature, assignment with
hysteresis, expert log-probs, routing weights, and the step transitions of trajectories.

* temperature annealing:   ``T_k = max(T_min, T_0 · γ^k)`` at training iteration k
* routing distribution:    ``q_t = softmax(z_t / T_k)``
* assignment (hysteresis): propose ``e' ~ q_t`` (rollout) or ``e' = argmax q_t`` (evaluation);
  keep ``e_{t−1}`` unless ``q_t(e') − q_t(e_{t−1}) > δ`` (first step: ``e_t = e'``)
* expert log-prob:         ``log q_t(e_t)`` (spec), or ``log p_t(e_t)`` with ``p_t`` the exact
  distribution of the sample-then-hysteresis rule (:func:`hysteresis_distribution`)
* routing weights:         hard ``onehot(e)``, straight-through ``onehot(e) + q − sg(q)``
  (value one-hot, gradient of q), soft ``q``

Rows are environment steps; ``previous`` holds ``e_{t−1}`` per row, −1 at a trajectory's first
step. Imports only torch and :mod:`grouprl.validation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grouprl.validation import check_bool, check_choice, check_int, check_number

from .options import EXPERT_LOGPROBS, ROUTER_GRADS

__all__ = ["temperature_at", "routing_probs", "propose_experts", "apply_hysteresis",
           "assign_experts", "hysteresis_distribution", "expert_log_prob", "routing_weights",
           "transitions"]


def temperature_at(iteration: int, init: float = 1.0, minimum: float = 0.1,
                   decay: float = 0.95) -> float:
    """``T_k = max(T_min, T_0 · γ^k)``; e.g. k = 0, 10, 20, 44, 45 → 1, 0.5987, 0.3585,
    0.1047, 0.1 with the defaults (spec §3.5 check 5)."""
    check_int("iteration", iteration, 0)
    check_number("init", init, 0.0, low_open=True)
    check_number("minimum", minimum, 0.0, low_open=True)
    check_number("decay", decay, 0.0, 1.0, low_open=True)
    return max(minimum, init * decay ** iteration)


def routing_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``q = softmax(z / T)`` over the last dimension, in fp32 or wider."""
    check_number("temperature", temperature, 0.0, low_open=True)
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.softmax(z / temperature, dim=-1)


def propose_experts(q: torch.Tensor, *, greedy: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The proposal ``e'`` per row: ``argmax q`` (``greedy``) or a sample ``e' ~ q``."""
    check_bool("greedy", greedy)
    if greedy:
        return q.argmax(-1)
    return torch.multinomial(q.detach().float(), 1, generator=generator).squeeze(-1)


def apply_hysteresis(q: torch.Tensor, previous: torch.Tensor, proposal: torch.Tensor,
                     margin: float) -> torch.Tensor:
    """``e_t = e'`` if ``e_{t−1} < 0`` or ``q(e') − q(e_{t−1}) > δ``, else ``e_{t−1}``."""
    check_number("margin", margin, 0.0, 1.0)
    first = previous < 0
    prev = previous.clamp(min=0)
    q_prop = q.gather(-1, proposal[:, None]).squeeze(-1)
    q_prev = q.gather(-1, prev[:, None]).squeeze(-1)
    switch = first | (q_prop - q_prev > margin)                              # beats by > δ
    return torch.where(switch, proposal, prev)


def assign_experts(q: torch.Tensor, previous: torch.Tensor, margin: float, *,
                   greedy: bool = False, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Rollout (sample) or evaluation (``greedy``: argmax) assignment with hysteresis, (N,)."""
    return apply_hysteresis(q, previous, propose_experts(q, greedy=greedy, generator=generator),
                            margin)


def hysteresis_distribution(q: torch.Tensor, previous: torch.Tensor,
                            margin: float) -> torch.Tensor:
    """The distribution of ``e_t`` under "sample e' ~ q, then hysteresis" (rows with a previous
    expert; first steps keep ``q``)::

        p(e) = q(e) · 1[q(e) − q(e_prev) > δ]                    for e ≠ e_prev
        p(e_prev) = q(e_prev) + Σ_{e ≠ e_prev} q(e) · 1[q(e) − q(e_prev) ≤ δ]

    Sums to 1; differentiable in q (the indicator sets held fixed).
    """
    check_number("margin", margin, 0.0, 1.0)
    prev = previous.clamp(min=0)
    is_prev = F.one_hot(prev, q.shape[-1]).bool()
    q_prev = q.gather(-1, prev[:, None])
    switch = (q - q_prev > margin) & ~is_prev                                 # e' wins by > δ
    kept = torch.where(switch | is_prev, torch.zeros_like(q), q).sum(-1, keepdim=True)
    p = torch.where(switch, q, torch.zeros_like(q)) + torch.where(is_prev, q + kept, 0.0)
    return torch.where((previous < 0)[:, None], q, p)


def expert_log_prob(q: torch.Tensor, experts: torch.Tensor, *, kind: str = "q",
                    previous: torch.Tensor | None = None, margin: float = 0.2) -> torch.Tensor:
    """(N,) log-prob of the chosen experts: ``log q(e)`` (``kind="q"``) or ``log p(e)`` under
    :func:`hysteresis_distribution` (``kind="hysteresis"``, needs ``previous``)."""
    check_choice("kind", kind, EXPERT_LOGPROBS)
    if kind == "hysteresis":
        if previous is None:
            raise ValueError("previous: required when kind='hysteresis'")
        q = hysteresis_distribution(q, previous, margin)
    return q.gather(-1, experts[:, None]).squeeze(-1).clamp_min(1e-30).log()


def routing_weights(q: torch.Tensor, experts: torch.Tensor, mode: str = "joint") -> torch.Tensor:
    """(N, E) weights for :func:`grouprl.moe.lora.route`: ``"joint"`` one-hot (no gradient),
    ``"straight_through"`` ``onehot + q − sg(q)``, ``"soft"`` ``q`` itself."""
    check_choice("mode", mode, ROUTER_GRADS)
    if mode == "soft":
        return q
    hard = F.one_hot(experts, q.shape[-1]).to(q.dtype)
    return hard if mode == "joint" else hard + q - q.detach()


def transitions(trajectory: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``(before, after)`` of every transition t−1 → t: two rows of the same
    trajectory whose steps differ by exactly 1 (a gap left by a dropped row is no transition).
    Rows may come in any order; pairs are returned sorted by (trajectory, step)."""
    if trajectory.shape != step.shape or trajectory.dim() != 1:
        raise ValueError(f"trajectory, step: expected two 1-D tensors of one shape, got "
                         f"{tuple(trajectory.shape)} and {tuple(step.shape)}")
    if trajectory.numel() < 2:
        empty = torch.zeros(0, dtype=torch.long, device=trajectory.device)
        return empty, empty
    order = torch.argsort(step.long(), stable=True)
    order = order[torch.argsort(trajectory.long()[order], stable=True)]      # by (traj, step)
    t, s = trajectory[order], step[order]
    linked = (t[1:] == t[:-1]) & (s[1:] - s[:-1] == 1)
    return order[:-1][linked], order[1:][linked]
