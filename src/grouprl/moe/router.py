"""The phase router (spec-seed-systems §3.3): goal-conditioned observation encoding, a GRU over
the history of observations and chosen experts, and a small MLP to E logits.

Per environment step t of a trajectory, with features from the frozen base
(:func:`grouprl.moe.features.pooled_features`: g of the goal text, o_t of the observation)::

    f_t = [ LN(o_t ⊙ σ(W_g g)) ; h_{t−1} ]                goal-conditioned encoding ⊕ history
    z_t = MLP(f_t)   (Linear → GELU → Linear to E)          router logits
    u_t = proj(o_t) ⊕ onehot(e_t),   h_t = GRU(u_t, h_{t−1}),   h_0 = 0

``PhaseRouter.forward`` runs the same recursion teacher-forced over whole trajectories with the
experts chosen at rollout, so the logits recomputed in the learner equal those of the rollout
(:func:`route_step`) given the same stored features.

Choices where the paper is unread: a GRU cell (the code has a 2-layer LSTM; spec allows either),
GELU, and a zero-initialised output layer (``zero_init_output``) so every q starts uniform and
every expert is used at T_0 = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grouprl.validation import check_bool, check_choice, check_int, check_number

from .options import EXPERT_LOGPROBS
from .routing import assign_experts, expert_log_prob, routing_probs

__all__ = ["PhaseRouter", "RouterStep", "route_step"]


class PhaseRouter(nn.Module):
    """Goal-gated observation encoder + GRU history + MLP → E logits (module docstring).

    Args:
        feature_dim: size of the pooled base hidden states (the base's hidden size).
        num_experts: E.
        width: MLP hidden width (256). history_dim: GRU state size (128).
        history_proj: size of ``proj(o_t)`` fed to the GRU (128).
        zero_init_output: start with all-zero logits (uniform q).
    """

    def __init__(self, feature_dim: int, num_experts: int, *, width: int = 256,
                 history_dim: int = 128, history_proj: int = 128,
                 zero_init_output: bool = True) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("num_experts", num_experts),
                            ("width", width), ("history_dim", history_dim),
                            ("history_proj", history_proj)):
            check_int(name, value, 1)
        check_bool("zero_init_output", zero_init_output)
        self.num_experts, self.history_dim = num_experts, history_dim
        self.goal_gate = nn.Linear(feature_dim, feature_dim)                 # W_g
        self.obs_norm = nn.LayerNorm(feature_dim)
        self.obs_proj = nn.Linear(feature_dim, history_proj)                 # proj(o_s)
        self.history = nn.GRUCell(history_proj + num_experts, history_dim)
        self.hidden = nn.Linear(feature_dim + history_dim, width)
        self.out = nn.Linear(width, num_experts)
        if zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def initial_state(self, rows: int) -> torch.Tensor:
        """h_0 = 0, shape (rows, history_dim)."""
        p = self.out.weight
        return torch.zeros(rows, self.history_dim, dtype=p.dtype, device=p.device)

    def logits(self, obs: torch.Tensor, goal: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """z_t = MLP([LN(o_t ⊙ σ(W_g g)) ; h_{t−1}]), (N, E)."""
        encoded = self.obs_norm(obs * torch.sigmoid(self.goal_gate(goal)))  # goal-conditioned
        f = torch.cat([encoded, state], dim=-1)
        return self.out(F.gelu(self.hidden(f)))

    def next_state(self, state: torch.Tensor, obs: torch.Tensor,
                   experts: torch.Tensor) -> torch.Tensor:
        """h_t = GRU(proj(o_t) ⊕ onehot(e_t), h_{t−1})."""
        u = torch.cat([self.obs_proj(obs), F.one_hot(experts, self.num_experts).to(obs.dtype)],
                      dim=-1)
        return self.history(u, state)

    def forward(self, obs: torch.Tensor, goal: torch.Tensor,
                experts: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits over trajectories: ``obs`` (B, S, d), ``goal`` (B, d),
        ``experts`` (B, S) the experts chosen at rollout → (B, S, E).

        Step t's logits see the history up to t−1 only. Positions past a trajectory's end may
        hold any valid expert index (e.g. 0); their logits are meaningless and must be masked.
        """
        if obs.dim() != 3 or goal.dim() != 2 or experts.shape != obs.shape[:2]:
            raise ValueError(f"obs, goal, experts: expected (B, S, d), (B, d), (B, S); got "
                             f"{tuple(obs.shape)}, {tuple(goal.shape)}, {tuple(experts.shape)}")
        state = self.initial_state(obs.shape[0])
        out = []
        for t in range(obs.shape[1]):
            out.append(self.logits(obs[:, t], goal, state))
            state = self.next_state(state, obs[:, t], experts[:, t])
        if not out:
            return obs.new_zeros(obs.shape[0], 0, self.num_experts)
        return torch.stack(out, dim=1)


@dataclass(frozen=True)
class RouterStep:
    """One rollout step's routing: ``experts`` (N,), their ``log_prob`` (N,), ``q`` (N, E), the
    ``logits`` (N, E) and the router ``state`` after the step (h_t, to pass to the next step)."""

    experts: torch.Tensor
    log_prob: torch.Tensor
    q: torch.Tensor
    logits: torch.Tensor
    state: torch.Tensor


@torch.no_grad()
def route_step(router: PhaseRouter, obs: torch.Tensor, goal: torch.Tensor,
               state: torch.Tensor | None, previous: torch.Tensor, *, temperature: float,
               margin: float = 0.2,
               greedy: bool = False, logprob_kind: str = "q",
               generator: torch.Generator | None = None) -> RouterStep:
    """What the sampler calls once per environment step for its active trajectories:
    ``z = router(o_t, g, h_{t−1})``, ``q = softmax(z / T)``, assignment with hysteresis (sampled
    at rollout, argmax when ``greedy``), the chosen experts' log-prob, and ``h_t``.

    ``previous`` is e_{t−1} per row (−1 at a first step); ``state`` is h_{t−1} (``None``: all
    rows start; rows with ``previous < 0`` are reset to h_0 = 0). Store ``experts``,
    ``log_prob`` (and the features) per row.
    """
    check_number("temperature", temperature, 0.0, low_open=True)
    check_choice("logprob_kind", logprob_kind, EXPERT_LOGPROBS)
    fresh = router.initial_state(obs.shape[0])
    state = fresh if state is None else torch.where((previous < 0)[:, None], fresh, state)
    logits = router.logits(obs, goal, state)
    q = routing_probs(logits, temperature)
    experts = assign_experts(q, previous, margin, greedy=greedy, generator=generator)
    log_prob = expert_log_prob(q, experts, kind=logprob_kind, previous=previous, margin=margin)
    return RouterStep(experts=experts, log_prob=log_prob, q=q, logits=logits,
                      state=router.next_state(state, obs, experts))
