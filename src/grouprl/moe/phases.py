"""The released code's keyword phase labeller, for the optional router pre-training
(spec-seed-systems §3.3 "Router pre-training"; off by default).

Phases, in the code's expert order: 0 explore, 1 interact, 2 navigate, 3 recover. For step t of
one ALFWorld-like trajectory, with ``o_t`` the observation the agent sees before acting (the
result of ``a_{t−1}``) and ``a_t`` its action::

    recover   if o_{t−2}, o_{t−1}, o_t are all failures ("Nothing happens", or r_{t−1} < 0)
    interact  elif a_t takes an object ("take …", "pick up …") or heats / cleans / cools
    navigate  elif a_t is "go to …" or "put …" after an object was taken (and, with
              ``navigate_after="processed"``, the default, after it was heated/cleaned/cooled)
    explore   otherwise

The ordering of the rules and the meaning of "after" are our reading of the spec's one-line
description; :func:`phase_pretrain_loss` is the cross-entropy of the router logits to these labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from grouprl.validation import check_choice

__all__ = ["PHASES", "keyword_phases", "phase_pretrain_loss"]

PHASES = ("explore", "interact", "navigate", "recover")
_TAKE = ("take ", "pick up ", "pick ")
_PROCESS = ("heat ", "clean ", "cool ")
_MOVE = ("go to ", "put ")
_FAILURE = "nothing happens"


def keyword_phases(observations: Sequence[str], actions: Sequence[str],
                   rewards: Sequence[float] | None = None, *,
                   navigate_after: str = "processed") -> list[int]:
    """Phase index (into :data:`PHASES`) of every step of one trajectory (module docstring).

    ``rewards[t]`` is the reward of step t; ``r_{t−1} < 0`` marks ``o_t`` as a failure.
    """
    check_choice("navigate_after", navigate_after, ("processed", "taken"))
    if len(observations) != len(actions) or (rewards is not None and len(rewards) != len(actions)):
        raise ValueError(f"observations, actions, rewards: expected equal lengths, got "
                         f"{len(observations)}, {len(actions)}, "
                         f"{None if rewards is None else len(rewards)}")
    labels, failures, taken, processed = [], 0, False, False
    for t, (obs, action) in enumerate(zip(observations, actions)):
        failed = _FAILURE in obs.lower() or (rewards is not None and t > 0 and rewards[t - 1] < 0)
        failures = failures + 1 if failed else 0
        act = action.strip().lower() + " "
        ready = taken and (processed or navigate_after == "taken")
        if failures >= 3:
            label = 3
        elif act.startswith(_TAKE) or act.startswith(_PROCESS):
            label = 1
        elif act.startswith(_MOVE) and ready:
            label = 2
        else:
            label = 0
        taken = taken or act.startswith(_TAKE)
        processed = processed or (taken and act.startswith(_PROCESS))
        labels.append(label)
    return labels


def phase_pretrain_loss(logits: torch.Tensor, labels: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of router logits (N, E) to phase labels (N,) over the masked rows."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits, labels: expected (N, E) and (N,), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels: phase {int(labels.max())} needs at least "
                         f"{int(labels.max()) + 1} experts, the router has {logits.shape[1]}")
    per = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    if mask is None:
        return per.mean()
    m = mask.bool()
    return torch.where(m, per, 0.0).sum() / m.sum().clamp_min(1)
