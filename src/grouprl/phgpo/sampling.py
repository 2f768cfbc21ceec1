"""Pheromone-guided tool sampling and the importance ratio of PhGPO (spec §2.3, §2.9).

Released code: ``ToolSelectionPolicy.sample_action`` (v12); README formula q ∝ p · τ^β. Per row b:

1. ``p = softmax(ℓ / T)`` (T = 0.7); keep the top-k (k = 20) tools, *not* renormalised;
2. ``q = softmax(log p_topk + β · log τ(a⁻, · | x))`` over the k candidates (q ∝ p·τ^β); at the
   first step, unless ``first_step_use_pheromone``, the weights are p_topk as they are;
3. ε-exploration (ε = 0.05): with probability ε a uniform candidate, otherwise a ~ q;
4. teacher forcing: with probability p_tf the reference tool replaces the choice (step ``tf``).

Stored old log-prob and the learner's new log-prob, by ``ratio_mode`` (spec §2.9):

==============  =================================================  ================================
ratio_mode      old (stored at sampling)                           new (recomputed at update)
==============  =================================================  ================================
"reference"     log q(a); first step log p_T(a) (unnormalised);   ``log softmax(ℓ)(a)``, T = 1,
                tf: ``log softmax(ℓ)(a_gt)`` at T = 1              all tools (the code's ratio)
"fused"         log q(a) with β_eff = β, or 0 at a first step      the same fused formula from the
(default)       without pheromone (so normalised over the top-k);  current logits, stored
                tf: ``log softmax(ℓ)(a_gt)``                       candidates, τ, β, T
"policy"        ``log softmax(ℓ)(a)`` at T = 1                     the same
==============  =================================================  ================================

Why "fused" is the default [GUESS]: "reference" divides a pure-policy probability (T = 1, all
tools) by a fused, tempered, top-k probability, so at θ = θ_old the ratio is not 1 (0.7308 in the
spec's example) and the PPO clip acts on that bias rather than on the policy change. Recomputing
the same distribution that was sampled from makes ratio = 1 at θ_old, which is what the clip
assumes; "policy" also has ratio 1 but ignores that the pheromone shaped the behaviour
distribution. The stored log-prob is that of q (ε-exploration is not folded in, as in the code).
In native modes teacher-forced steps are left out of the policy-gradient term
(:func:`policy_gradient_mask`); "reference" trains them like sampled steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from grouprl.validation import check_choice, check_int, check_number

__all__ = ["RATIO_MODES", "ToolSample", "concat_samples", "current_logprobs", "fused_log_probs",
           "policy_gradient_mask", "sample_tools", "tempered_topk"]

RATIO_MODES = ("fused", "reference", "policy")
TauSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ToolSample:
    """One batch of sampled steps (per-row tensors), enough to recompute any ratio mode.

    Attributes:
        action: chosen tool id [B]. old_logprob: stored log-prob for ``ratio_mode`` [B].
        sampling_logprob: log q(a) of the fused top-k distribution (0 where teacher-forced).
        candidates: top-k tool ids [B, k]; log_tau: log τ of each candidate [B, k].
        beta: β_eff per row (0 at a first step sampled without pheromone). position: index
            of ``action`` in ``candidates`` (−1 for a teacher-forced tool outside them).
        teacher_forced, explored: step flags [B]. temperature: T.
    """

    action: torch.Tensor
    old_logprob: torch.Tensor
    sampling_logprob: torch.Tensor
    candidates: torch.Tensor
    log_tau: torch.Tensor
    beta: torch.Tensor
    position: torch.Tensor
    teacher_forced: torch.Tensor
    explored: torch.Tensor
    temperature: float


def concat_samples(samples: Sequence[ToolSample]) -> ToolSample:
    """Join step batches row-wise (same k and T) for one learner call."""
    if not samples or len({s.temperature for s in samples}) != 1:
        raise ValueError("samples: expected a non-empty list with one temperature")
    return ToolSample(**{f.name: (samples[0].temperature if f.name == "temperature" else
                                  torch.cat([getattr(s, f.name) for s in samples]))
                         for f in fields(ToolSample)})


def tempered_topk(logits: torch.Tensor, temperature: float, top_k: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_topk [B, k], candidates [B, k]): ``log softmax(ℓ / T)`` at the k largest, ties
    to the lower tool id, not renormalised."""
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    order = torch.sort(log_p, dim=-1, descending=True, stable=True).indices
    candidates = order[:, :min(top_k, logits.shape[-1])]
    return log_p.gather(-1, candidates), candidates


def fused_log_probs(log_p_topk: torch.Tensor, log_tau: torch.Tensor, beta: torch.Tensor
                    ) -> torch.Tensor:
    """``log q = log softmax(log p_topk + β · log τ)`` over the candidates (q ∝ p·τ^β)."""
    return torch.log_softmax(log_p_topk + beta.unsqueeze(-1) * log_tau, dim=-1)


def _candidate_tau(tau: TauSource, candidates: torch.Tensor) -> torch.Tensor:
    values = tau(candidates) if callable(tau) else torch.as_tensor(tau).gather(-1, candidates)
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.shape != candidates.shape or not bool((values > 0).all()):
        raise ValueError(f"tau: expected positive values of shape {tuple(candidates.shape)}, "
                         f"got shape {tuple(values.shape)}")
    return values


def sample_tools(logits: torch.Tensor, tau: TauSource, *, beta: float, temperature: float = 0.7,
                 top_k: int = 20, epsilon: float = 0.05, first_step: torch.Tensor | None = None,
                 first_step_use_pheromone: bool = False, teacher: torch.Tensor | None = None,
                 teacher_forcing: float = 0.0, ratio_mode: str = "fused",
                 generator: torch.Generator | None = None) -> ToolSample:
    """Sample one tool per row (module docstring, steps 1–4).

    Args:
        logits: tool-head logits ℓ [B, V].
        tau: fused pheromone, either rows over all tools [B, V] or ``fn(candidates [B, k]) ->
            τ [B, k]`` (e.g. ``lambda c: store.tau(prev, c, emb, lam)``).
        beta: β ≥ 0. temperature: T > 0. top_k: k ≥ 1. epsilon: ε in [0, 1].
        first_step: [B] bool, rows at step 0 (no pheromone unless ``first_step_use_pheromone``).
        teacher: [B] reference tool ids (−1: none); ``teacher_forcing``: p_tf in [0, 1].
        ratio_mode: "fused" (default), "reference" or "policy".
        generator: torch RNG; four draws per call in a fixed order (tf, ε, uniform, q).
    """
    check_number("beta", beta, 0.0)
    check_number("temperature", temperature, 0.0, low_open=True)
    check_int("top_k", top_k, 1)
    check_number("epsilon", epsilon, 0.0, 1.0)
    check_number("teacher_forcing", teacher_forcing, 0.0, 1.0)
    check_choice("ratio_mode", ratio_mode, RATIO_MODES)
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [B, V], got {tuple(logits.shape)}")
    rows = logits.shape[0]
    first = torch.zeros(rows, dtype=torch.bool) if first_step is None else first_step.bool()
    teacher = torch.full((rows,), -1, dtype=torch.long) if teacher is None else teacher.long()
    with torch.no_grad():
        log_p_topk, candidates = tempered_topk(logits, temperature, top_k)
        log_tau = torch.log(_candidate_tau(tau, candidates)).to(logits.dtype)
        use_tau = ~first | first_step_use_pheromone
        beta_eff = torch.where(use_tau, beta, 0.0).to(logits.dtype)
        log_q = fused_log_probs(log_p_topk, log_tau, beta_eff)
        # reference: the first step without pheromone samples from p_topk as it is
        log_w = torch.where(use_tau.unsqueeze(-1), log_q, log_p_topk)
        u_tf = torch.rand(rows, generator=generator)
        u_eps = torch.rand(rows, generator=generator)
        uniform = torch.randint(candidates.shape[1], (rows,), generator=generator)
        drawn = torch.multinomial(log_q.exp(), 1, generator=generator).squeeze(-1)
        explored = u_eps < epsilon
        position = torch.where(explored, uniform, drawn)
        forced = (teacher >= 0) & (u_tf < teacher_forcing)
        action = torch.where(forced, teacher, candidates.gather(-1, position[:, None])[:, 0])
        in_topk = candidates == action.unsqueeze(-1)
        position = torch.where(in_topk.any(-1), in_topk.long().argmax(-1), -1)
        pure = torch.log_softmax(logits, dim=-1).gather(-1, action[:, None])[:, 0]   # T = 1
        pick = position.clamp_min(0)[:, None]
        sampled_logq = torch.where(forced, 0.0, log_q.gather(-1, pick)[:, 0])
        if ratio_mode == "policy":
            old = pure
        elif ratio_mode == "reference":
            old = torch.where(forced, pure, log_w.gather(-1, pick)[:, 0])
        else:
            old = torch.where(forced, pure, sampled_logq)
    return ToolSample(action, old, sampled_logq, candidates, log_tau, beta_eff, position,
                      forced, explored & ~forced, float(temperature))


def current_logprobs(logits: torch.Tensor, sample: ToolSample, ratio_mode: str = "fused"
                     ) -> torch.Tensor:
    """The learner's differentiable new log-prob of each stored action (module table).

    ``ratio = exp(current_logprobs − sample.old_logprob)``; in "fused" and "policy" modes it is
    exactly 1 when ``logits`` are the sampling-time logits.
    """
    check_choice("ratio_mode", ratio_mode, RATIO_MODES)
    pure = torch.log_softmax(logits, dim=-1).gather(-1, sample.action[:, None])[:, 0]
    if ratio_mode != "fused":
        return pure
    log_p = torch.log_softmax(logits / sample.temperature, dim=-1).gather(-1, sample.candidates)
    log_q = fused_log_probs(log_p, sample.log_tau.to(logits.dtype), sample.beta.to(logits.dtype))
    fused = log_q.gather(-1, sample.position.clamp_min(0)[:, None])[:, 0]
    return torch.where(sample.teacher_forced | (sample.position < 0), pure, fused)


def policy_gradient_mask(teacher_forced: torch.Tensor, ratio_mode: str = "fused") -> torch.Tensor:
    """Rows that enter the PPO term: all in "reference" (the code), non-tf rows otherwise
    [GUESS, spec §2.9 item 2]; teacher-forced rows still enter the supervised CE term."""
    check_choice("ratio_mode", ratio_mode, RATIO_MODES)
    if ratio_mode == "reference":
        return torch.ones_like(teacher_forced, dtype=torch.bool)
    return ~teacher_forced.bool()
