"""The PhGPO pheromone store: scalar + context pheromone and their fusion (spec §2.4).

Released code: ``HybridPheromoneSystem`` (v12). The fused pheromone of candidate a after a⁻ for a
task with embedding e, at fusion weight λ (schedule: :func:`grouprl.phgpo.schedules.fusion_weight`):

* ``λ_eff = λ · min(1, 1.5 · c)``
* ``τ = (1 − λ_eff) · τ_scalar + λ_eff · τ_ctx`` if the context confidence c ≥ 0.25,
  else ``τ = τ_scalar``.

:meth:`PheromoneStore.update` is what a trainer calls after each rollout (deposit + context
write), :meth:`PheromoneStore.evaporate` every 20 tasks, and ``state_dict`` /
``load_state_dict`` in checkpoints (plain tensors, lists and numbers).

Context write rule ``context_write`` [GUESS default]: the code writes memories from two places —
the deposit path, "deposit": ``(success and m ≥ 0.5) or m ≥ 0.7``; and a direct call, "direct":
``success or m ≥ 0.5``; both then require m ≥ 0.3. "deposit" is the default here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from grouprl.validation import check_choice, check_number

from .context import ContextConfig, ContextMemory
from .transition import PheromoneConfig, TransitionPheromone, transitions

__all__ = ["CONTEXT_WRITE_RULES", "PheromoneStore", "fuse"]

CONTEXT_WRITE_RULES = ("deposit", "direct")


def fuse(tau_scalar: torch.Tensor, tau_ctx: torch.Tensor, confidence: torch.Tensor, lam: float,
         *, min_confidence: float = 0.25, gain: float = 1.5) -> torch.Tensor:
    """``τ = (1 − λ_eff)·τ_s + λ_eff·τ_ctx`` if c ≥ 0.25, else τ_s; ``λ_eff = λ·min(1, 1.5c)``."""
    lam_eff = lam * torch.clamp(gain * confidence, max=1.0)             # λ · min(1, 1.5c)
    blended = (1.0 - lam_eff) * tau_scalar + lam_eff * tau_ctx
    return torch.where(confidence >= min_confidence, blended, tau_scalar)


class PheromoneStore:
    """Scalar (task-agnostic) + context (task-dependent) pheromone with fusion.

    Args:
        num_tools: |original tools|; the store's ``start`` id (``num_tools``) is ``__START__``.
        num_variants: argument-schema variants (parameter pheromone), 0 for none.
        scalar, context: the constants (:class:`PheromoneConfig`, :class:`ContextConfig`).
        use_context: False turns the context memories off (τ = τ_scalar).
        context_write: "deposit" (default) or "direct" (module docstring).
        min_confidence, fusion_gain: c ≥ 0.25 to blend; λ_eff = λ·min(1, 1.5c).
    """

    def __init__(self, num_tools: int, num_variants: int = 0, *,
                 scalar: PheromoneConfig | None = None, context: ContextConfig | None = None,
                 use_context: bool = True, context_write: str = "deposit",
                 min_confidence: float = 0.25, fusion_gain: float = 1.5) -> None:
        check_choice("use_context", use_context, (False, True))
        check_choice("context_write", context_write, CONTEXT_WRITE_RULES)
        check_number("min_confidence", min_confidence, 0.0, 1.0)
        check_number("fusion_gain", fusion_gain, 0.0)
        self.scalar = TransitionPheromone(num_tools, num_variants, scalar)
        self.memory = ContextMemory(context)
        self.use_context, self.context_write = use_context, context_write
        self.min_confidence, self.fusion_gain = min_confidence, fusion_gain

    @property
    def num_tools(self) -> int:
        return self.scalar.num_tools

    @property
    def start(self) -> int:
        """The ``__START__`` id (previous tool of step 0)."""
        return self.scalar.start

    def tau(self, prev: torch.Tensor, candidates: torch.Tensor,
            embeddings: torch.Tensor | None = None, lam: float = 0.0) -> torch.Tensor:
        """Fused τ(a⁻_b → c_bj | x_b), shape [B, k], for rows ``prev`` [B], candidates [B, k].

        ``embeddings`` [B, D] are the tasks' embeddings; None (or ``use_context=False``) gives
        τ_scalar.
        """
        check_number("lam", lam, 0.0, 1.0)
        prev, candidates = torch.as_tensor(prev).long(), torch.as_tensor(candidates).long()
        if candidates.dim() != 2 or prev.shape != candidates.shape[:1]:
            raise ValueError(f"candidates: expected shape [B, k] with prev [B], got "
                             f"{tuple(candidates.shape)} and {tuple(prev.shape)}")
        tau_scalar = self.scalar.values(prev, candidates)
        if embeddings is None or not self.use_context or lam == 0.0 or len(self.memory) == 0:
            return tau_scalar
        ctx = torch.empty_like(tau_scalar)
        conf = torch.empty_like(tau_scalar)
        for b in range(candidates.shape[0]):
            for j in range(candidates.shape[1]):
                ctx[b, j], conf[b, j] = self.memory.query(int(prev[b]), int(candidates[b, j]),
                                                          embeddings[b])
        return fuse(tau_scalar, ctx, conf, lam, min_confidence=self.min_confidence,
                    gain=self.fusion_gain)

    def should_write_context(self, match: float, success: bool) -> bool:
        """The context write condition (module docstring; m ≥ 0.3 is checked by the memory)."""
        if self.context_write == "deposit":
            return (success and match >= 0.5) or match >= 0.7
        return success or match >= 0.5

    def update(self, actions: Sequence[int], match: float, *, reference_success: bool = True,
               variants: Sequence[int] = (), embedding: torch.Tensor | None = None,
               task_key: str = "") -> float:
        """After one rollout: scalar deposit, then the context write; returns the Δτ."""
        amount = self.scalar.deposit(actions, match, reference_success, variants)
        success = self.scalar.is_success(match, reference_success)
        if self.use_context and embedding is not None and self.should_write_context(match,
                                                                                  success):
            prev, nxt = transitions(list(actions), self.start)
            self.memory.write(list(zip(prev.tolist(), nxt.tolist())), embedding, task_key,
                              match)
        return amount

    def evaporate(self, protect: bool = False) -> None:
        """Scalar evaporation (protected floors when ``protect``) and context decay."""
        self.scalar.evaporate(protect)
        self.memory.decay()

    def state_dict(self) -> dict[str, Any]:
        """``{"scalar": ..., "context": ..., "options": ...}``: plain tensors/lists/numbers."""
        return {"scalar": self.scalar.state_dict(), "context": self.memory.state_dict(),
                "options": {"use_context": self.use_context, "context_write": self.context_write,
                            "min_confidence": self.min_confidence,
                            "fusion_gain": self.fusion_gain}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` returned."""
        self.scalar.load_state_dict(state["scalar"])
        self.memory.load_state_dict(state["context"])
        options = state["options"]
        self.use_context = check_choice("use_context", options["use_context"], (False, True))
        self.context_write = check_choice("context_write", options["context_write"],
                                          CONTEXT_WRITE_RULES)
        self.min_confidence, self.fusion_gain = options["min_confidence"], options["fusion_gain"]
