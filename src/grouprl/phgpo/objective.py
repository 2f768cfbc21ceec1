"""The PhGPO per-step loss of stages 2 and 3 (spec §2.7), on the tool-head logits.

Released code: ``train_mixed_imitation_rl`` / ``train_rl_finetune`` (v12). For step t of a
rollout with trajectory advantage A (the same A at every step, spec §2.5), reference tool g_t:

    ``L_t = w_sl · CE_ls(ℓ_t, g_t) + (1 − w_sl) · m_t · PPO-clip(ρ_t, A) − c_H · H(softmax ℓ_t)``

with ``ρ_t = exp(log π_new(a_t) − old_t)`` (:func:`grouprl.phgpo.sampling.current_logprobs`),
clip ε = 0.2, c_H = 0.02, m_t the policy-gradient mask (all steps in "reference", the non-tf steps
otherwise), and the loss the mean over all steps of the task's rollouts (the code accumulates
gradients over every step and divides by their number). Stage 3 uses w_sl = 0. The stage-2 CE
label smoothing is not given by the spec; default 0 [GUESS] (stage 1 uses 0.1).
The clipped surrogate is grouprl's :func:`grouprl.losses.policy.ppo_clip`.
"""

from __future__ import annotations

import torch

from grouprl.losses.policy import ppo_clip
from grouprl.validation import check_number

from .sampling import ToolSample, current_logprobs, policy_gradient_mask

__all__ = ["step_loss"]


def step_loss(logits: torch.Tensor, sample: ToolSample, advantages: torch.Tensor,
              labels: torch.Tensor, *, sl_weight: float, ratio_mode: str = "fused",
              clip: float = 0.2, entropy_coef: float = 0.02, label_smoothing: float = 0.0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean per-step loss (module docstring) and metrics (ratio mean, clip fraction, CE, H).

    Args:
        logits: current tool-head logits [N, V] of the N steps.
        sample: the N steps as sampled (:func:`grouprl.phgpo.sampling.concat_samples`).
        advantages: trajectory advantage broadcast to each step [N].
        labels: reference tool g_t of each step [N].
    """
    check_number("sl_weight", sl_weight, 0.0, 1.0)
    check_number("clip", clip, 0.0, low_open=True)
    check_number("entropy_coef", entropy_coef)
    check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    new = current_logprobs(logits, sample, ratio_mode)
    ratio = torch.exp(new - sample.old_logprob.to(new.dtype))                    # ρ_t
    mask = policy_gradient_mask(sample.teacher_forced, ratio_mode).to(new.dtype)
    pg = ppo_clip(ratio, advantages.to(new.dtype), clip, clip) * mask           # m_t · PPO-clip
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none",
                                           label_smoothing=label_smoothing)      # CE_ls(ℓ, g)
    log_pi = torch.log_softmax(logits, dim=-1)
    entropy = -(log_pi.exp() * log_pi).sum(-1)                                   # H(softmax ℓ)
    loss = (sl_weight * ce + (1.0 - sl_weight) * pg - entropy_coef * entropy).mean()
    clipped = ((ratio - 1.0).abs() > clip).to(new.dtype) * mask
    metrics = {"ratio_mean": float(ratio.detach().mean()), "ce": float(ce.detach().mean()),
               "clip_fraction": float(clipped.sum() / mask.sum().clamp_min(1.0)),
               "entropy": float(entropy.detach().mean())}
    return loss, metrics
