"""Policy-gradient, KL, entropy and preference losses (spec-losses; DESIGN.md ``losses/``).

``policy_loss(name, logp, old_logp, advantages, mask, agg, **options) -> (loss, metrics)`` and
``aggregate(loss_mat, mask, mode, global_tokens, global_seqs, max_len)`` are pure functions of
(N, T) tensors with an explicit mask; the package imports only torch.
"""

from .aggregate import AGG_MODES, aggregate, normalizer_counts
from .drpo import SEQUENCE_LOSSES, drpo_loss, drpo_options, drpo_weights
from .kl import entropy_from_logits, kl_penalty
from .kpo import kalman_filter_log_ratio
from .logprobs import token_logprobs
from .policy import available_policy_losses, policy_loss, policy_loss_options
from .preference import preference_loss

__all__ = ["AGG_MODES", "aggregate", "available_policy_losses", "policy_loss_options",
           "drpo_loss", "drpo_options", "drpo_weights", "SEQUENCE_LOSSES", "entropy_from_logits",
           "kalman_filter_log_ratio", "kl_penalty", "normalizer_counts", "policy_loss",
           "preference_loss", "token_logprobs"]
