"""Policy objectives: what the learner calls per micro-batch, and what each loss declares it needs.

An objective is the loss term of one micro-batch plus its declarations, so the learner
(:func:`grouprl.train.learner.update_policy`) never branches on a loss name:

- ``batching``: ``"rows"`` (any rows per micro-batch; the PPO family) or ``"groups"`` (whole
  groups per micro- and mini-batch, as DRPO's per-question terms need);
- ``row_inputs``: per-row rollout columns gathered into every micro-batch (``advantages``,
  ``group_id``, ``success``, ...; see :meth:`grouprl.batch.Rollout.column`);
- ``needs_mini_batch_kl``: the loss needs ``KL_old`` of the whole mini-batch (DRPO's
  stop-gradient hinge), measured by one no-grad pass when a mini-batch spans micro-batches;
- ``summed_metrics``: metrics summed over a mini-batch's micro-batches (the others are averaged);
- ``single_turn``: the loss is defined on single-turn rows only (one response per task).

``make_objective(name, options, run)`` builds one; ``run`` holds run settings that some options
default to (DRPO's ``l_max`` = the rollout's ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .drpo import SEQUENCE_LOSSES, drpo_loss, drpo_options
from .policy import policy_loss, policy_loss_options

__all__ = ["PolicyGradientObjective", "DRPOObjective", "make_objective", "objective_class",
           "masked_kl_sum"]


def masked_kl_sum(old_logp: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
    """``Σ m·(ℓ^old − ℓ^θ)`` over a micro-batch (verl ``ppo_kl_type=kl``, summed)."""
    return torch.where(mask, old_logp.to(logp.dtype) - logp, 0.0).sum()


@dataclass
class PolicyGradientObjective:
    """An importance-sampling policy loss of :func:`grouprl.losses.policy_loss` (PPO-clip, GSPO,
    CISPO, SAPO, KPO, KL-Cov, ...): ``L = Agg(loss(ratio(ℓ^θ, ℓ^old), Â))`` normalised by the
    mini-batch token/sequence counts.

    ``engine_logprobs``: the rollout's sampler log-probs (``rows.logprobs``) come from an engine
    whose convention is not the learner's (vLLM's processed log-probs; run setting
    ``engine_logprobs``): they are then read as a row input and passed as ``rollout_logp`` (the
    truncated-IS correction of ``loss_options.rollout_is``, and the mismatch metrics), while
    ``ℓ^old`` is the learner's recomputed ``old_logp``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    loss_agg: str | None = None
    engine_logprobs: bool = False
    batching = "rows"
    single_turn = False
    row_inputs: tuple[str, ...] = ("advantages",)
    needs_mini_batch_kl = False
    summed_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        policy_loss_options(self.name, **self.options)   # validated once, at construction
        if self.engine_logprobs and "logprobs" not in self.row_inputs:
            self.row_inputs = (*self.row_inputs, "logprobs")

    @classmethod
    def build(cls, name: str, options: dict[str, Any], loss_agg: str | None,
              run: Mapping[str, Any]) -> PolicyGradientObjective:
        return cls(name, options, loss_agg,
                   engine_logprobs=bool(run.get("engine_logprobs", False)))

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor | None, mask: torch.Tensor,
                 mb: Mapping[str, torch.Tensor], *, global_tokens: torch.Tensor,
                 global_seqs: torch.Tensor, groups: int, kl_mini: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch; ``old_logp`` None = on-policy (``ℓ^old = sg(ℓ^θ)``)."""
        old = old_logp if old_logp is not None else logp.detach()
        engine = {"rollout_logp": mb["logprobs"][:, :logp.shape[1]]} if self.engine_logprobs \
            else {}
        pg, m = policy_loss(self.name, logp, old, mb["advantages"], mask, self.loss_agg,
                            global_tokens=global_tokens, global_seqs=global_seqs, **engine,
                            **self.options)
        out = {"actor/clipfrac": m.get("clipfrac", 0.0),
               "actor/ratio_mean": m.get("ratio_mean", 1.0),
               "actor/approx_kl": m.get("approx_kl_k3", 0.0)}
        if engine:
            out.update({f"actor/{k}": m[k] for k in ("rollout_is_weight_mean",
                                                     "rollout_is_frac_modified",
                                                     "mismatch_kl_k3")})
        return pg, out


@dataclass
class DRPOObjective:
    """DRPO (spec-rewards §A9; :mod:`grouprl.losses.drpo`) on a group-aligned micro-batch::

        s_θ     = mean_t ℓ^θ                                  (length-normalised score)
        KL_part = Σ_micro m·(ℓ^old − ℓ^θ) / tokens(mini)      (its share of KL_old)
        loss    = −(1/|Q_mini|) Σ_{q∈micro} J_q + β·sg(max(KL_mini − δ, 0))·KL_part

    so micro-batch losses sum to the mini-batch loss. ``KL_mini`` is the learner's no-grad
    measurement of the whole mini-batch (None: this micro-batch is the mini-batch, and the hinge
    uses ``KL_part`` itself)."""

    options: dict[str, Any] = field(default_factory=dict)
    batching = "groups"
    single_turn = True     # one response per row: a row's sequence score is a whole answer
    row_inputs: tuple[str, ...] = ("group_id", "success")
    summed_metrics: tuple[str, ...] = ("drpo/valid_questions", "drpo/kl_old")

    def __post_init__(self) -> None:
        self.options = drpo_options(**self.options)
        if self.options["l_max"] is None:
            raise ValueError("l_max: DRPO needs L_max (the rollout's max_new_tokens); pass it "
                             "as an option or through run={'max_new_tokens': ...}")

    @classmethod
    def build(cls, name: str, options: dict[str, Any], loss_agg: str | None,
              run: Mapping[str, Any]) -> DRPOObjective:
        if options.get("l_max") is None and "max_new_tokens" in run:
            options = {**options, "l_max": float(run["max_new_tokens"])}
        return cls(options)

    @property
    def needs_mini_batch_kl(self) -> bool:
        return self.options["beta"] != 0

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor | None, mask: torch.Tensor,
                 mb: Mapping[str, torch.Tensor], *, global_tokens: torch.Tensor,
                 global_seqs: torch.Tensor, groups: int, kl_mini: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        lengths = mask.sum(1)                                                    # L_i
        score = torch.where(mask, logp, 0.0).sum(1) / lengths.clamp(min=1)       # s_θ
        kl_part = None
        if old_logp is not None:                                                 # share of KL
            kl_part = masked_kl_sum(old_logp, logp, mask) / global_tokens.clamp(min=1)
        pg, m = drpo_loss(score, mb["success"].bool(), lengths, mb["group_id"].long(),
                          lam=o["lam"], tau=o["tau"], l_max=o["l_max"], num_questions=groups,
                          kl_old=kl_part, kl_hinge=kl_mini, beta=o["beta"], delta=o["delta"])
        return pg, dict(m)


def objective_class(name: str) -> type:
    """The objective type of loss ``name`` (sequence-level losses have their own)."""
    return DRPOObjective if name in SEQUENCE_LOSSES else PolicyGradientObjective


def make_objective(name: str, options: Mapping[str, Any] | None = None,
                   loss_agg: str | None = None, run: Mapping[str, Any] | None = None) -> Any:
    """The objective of loss ``name`` with ``options``; an option left unset that the loss
    takes from the run (DRPO's ``l_max``) comes from ``run`` (e.g. ``max_new_tokens``)."""
    return objective_class(name).build(name, dict(options or {}), loss_agg, run or {})
