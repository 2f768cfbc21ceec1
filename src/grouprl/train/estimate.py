"""The advantage stage: the configured estimator with what it declares it needs.

An estimator (:func:`grouprl.advantages.estimator_spec`) declares options that default to run
settings (HGPO's ``history_length`` = the memory window, CANON's ``l_max`` = ``max_new_tokens``)
and per-row inputs (REINFORCE++'s ``response_length``, CANON's ``metric``); this stage supplies
them, so a recipe computes advantages with one call and never names an estimator::

    Â = compute_advantages(estimator, rollout.batch, **options, **row_inputs(rollout, model))
"""

from __future__ import annotations

from typing import Any

import torch

from grouprl.advantages import compute_advantages, estimator_spec, grouping_stats
from grouprl.batch import Rollout
from grouprl.distributed import LOCAL, Comm
from grouprl.train.config import TrainConfig
from grouprl.train.learner import mean_token_entropy
from grouprl.train.row_policy import PLAIN, RowPolicy
from grouprl.train.sampling import single_turn

__all__ = ["AdvantageStage", "run_settings", "ROW_INPUTS"]

ROW_INPUTS = ("response_length", "token_entropy")
"""Per-row inputs a trainer can supply to an estimator: ``response_length`` (tokens of each
response; supplied when a row is a whole response, i.e. single-turn runs — verl-agent's
multi-turn rows are steps) and ``token_entropy`` (mean per-token entropy of each response under
the policy before the update, one no-grad pass)."""


def run_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Run settings that algorithm options may default to (see each algorithm's declaration)."""
    return {"history_length": cfg.agent.history_length,
            "max_new_tokens": float(cfg.rollout.max_new_tokens),
            "single_turn": single_turn(cfg)}


class AdvantageStage:
    """``algorithm.estimator`` with its options resolved against the run (see module doc)."""

    def __init__(self, cfg: TrainConfig, comm: Comm = LOCAL,
                 row_policy: RowPolicy = PLAIN) -> None:
        self.cfg, self.comm, self.row_policy = cfg, comm, row_policy
        self.name = cfg.algorithm.estimator
        self.spec = estimator_spec(self.name)
        run = {**run_settings(cfg), "comm": comm}  # batch-wide statistics over every rank
        self.options = dict(cfg.algorithm.estimator_options)
        for option, setting in self.spec.run_defaults.items():
            self.options.setdefault(option, run[setting])
        self.inputs = dict(self.spec.row_inputs(self.options))

    def row_inputs(self, rollout: Rollout, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The declared per-row inputs of this rollout, as estimator options."""
        out: dict[str, torch.Tensor] = {}
        for option, name in self.inputs.items():
            if name == "response_length" and single_turn(self.cfg):
                out[option] = rollout.response_mask.sum(1)
            elif name == "token_entropy":
                a = self.cfg.algorithm
                out[option] = mean_token_entropy(model, rollout,
                                                 temperature=self.cfg.rollout.temperature,
                                                 micro_batch_size=a.micro_batch_size,
                                                 comm=self.comm,
                                                 row_policy=self.row_policy)
            elif name not in ROW_INPUTS:
                raise ValueError(f"estimator {self.name!r} needs row input {name!r}; this "
                                 f"trainer supplies: {', '.join(ROW_INPUTS)}")
        return out

    def __call__(self, rollout: Rollout, model: torch.nn.Module) -> torch.Tensor:
        """(N,) advantages of the rollout's rows."""
        return compute_advantages(self.name, rollout.batch, **self.options,
                                  **self.row_inputs(rollout, model))

    def metrics(self, rollout: Rollout, adv: torch.Tensor) -> dict[str, float]:
        """Advantage summaries, and how often states repeat (step-level credit's premise)."""
        some = adv.numel() > 0
        out = {"train/advantage_mean": float(adv.mean()) if some else 0.0,
               "train/advantage_abs": float(adv.abs().mean()) if some else 0.0,
               "train/advantage_nonzero": float((adv != 0).double().mean()) if some else 0.0,
               "train/response_tokens": float(rollout.response_mask.sum())}
        if rollout.batch.state is not None and len(rollout):
            depth = self.options.get("history_length", self.cfg.agent.history_length)
            out.update({f"group/{k}": v for k, v in grouping_stats(rollout.batch, depth).items()})
        return out
