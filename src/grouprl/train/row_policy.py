"""How the learner computes a micro-batch's log-probs when rows are routed (PA-MoE).

A :class:`RowPolicy` is what :func:`grouprl.train.learner.update_policy` and
:func:`~grouprl.train.learner.batched_logprobs` consult around every forward; the learner knows
no algorithm by name. :data:`PLAIN` (the default) changes nothing: one forward of the model, the
token log-probs as they come, no extra loss. :class:`grouprl.train.pamoe.PhaseRouting` routes each
row to its LoRA expert, adds the expert log-prob to the token log-probs (the joint ratio) and
adds the router's auxiliary loss once per mini-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch

from grouprl.batch import Rollout

__all__ = ["RowForward", "RowPolicy", "PLAIN"]


class RowForward(Protocol):
    """One micro-batch's forward: the context to run it in, and the log-probs the loss sees."""

    def context(self) -> contextlib.AbstractContextManager: ...

    def joint(self, logp: torch.Tensor, mask: torch.Tensor,
              old_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class RowPolicy(Protocol):
    """Per-update hooks of a routed policy (module docstring)."""

    def begin(self, rows: Rollout) -> dict[str, float]: ...

    def micro_batch(self, rows: Rollout, idx: torch.Tensor, *, grad: bool) -> RowForward: ...

    def mini_batch_loss(self, rows: Rollout, idx: torch.Tensor
                        ) -> tuple[torch.Tensor | None, dict[str, float]]: ...


class _PlainForward:
    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        yield

    def joint(self, logp: torch.Tensor, mask: torch.Tensor,
              old_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logp, old_logp


class _Plain:
    """The identity :class:`RowPolicy`: every row through the one model, nothing added; no
    step routing at rollout (:meth:`sampling` and :meth:`evaluation` give ``None``)."""

    _forward = _PlainForward()

    def set_iteration(self, iteration: int) -> None:
        return None

    def sampling(self, generator: torch.Generator | None) -> None:
        return None

    def evaluation(self) -> None:
        return None

    def pretrain(self, sampler: object) -> dict[str, float]:
        return {}

    def begin(self, rows: Rollout) -> dict[str, float]:
        return {}

    def micro_batch(self, rows: Rollout, idx: torch.Tensor, *, grad: bool) -> RowForward:
        return self._forward

    def mini_batch_loss(self, rows: Rollout, idx: torch.Tensor
                        ) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}


PLAIN = _Plain()
"""Rows computed by the plain model (every non-routed policy)."""
