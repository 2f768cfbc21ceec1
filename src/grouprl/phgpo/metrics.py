"""PhGPO metrics: match ratio, success, next-tool accuracy, pass@k (spec §2.6).

* prefix match ratio (the reported "match rate"): ``m = #{t < H : a_t = g_t} / min(H, |ref|)``
  with H the steps run (position-wise equality);
* full match ratio: the same count divided by |ref|;
* success: m ≥ 0.7 and the reference run succeeded;
* model match: the match ratio over the steps that were not teacher-forced (elite buffer);
* next-tool accuracy: argmax accuracy of the tool head on supervised (state, next tool) samples;
* pass@k: the unbiased estimator ``1 − C(n − c, k) / C(n, k)`` (n runs, c successes).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import torch

from grouprl.validation import check_int

__all__ = ["full_match_ratio", "is_success", "match_ratio", "model_match_ratio",
           "next_tool_accuracy", "pass_at_k"]


def _matches(actions: Sequence[Any], reference: Sequence[Any]) -> int:
    return sum(a == g for a, g in zip(actions, reference))


def match_ratio(actions: Sequence[Any], reference: Sequence[Any]) -> float:
    """Prefix match ratio ``#{t < H : a_t = g_t} / min(H, |ref|)``, H = len(actions); 0 if H = 0."""
    horizon = min(len(actions), len(reference))
    return _matches(actions, reference) / horizon if horizon else 0.0


def full_match_ratio(actions: Sequence[Any], reference: Sequence[Any]) -> float:
    """``#{t : a_t = g_t} / |ref|``."""
    if not reference:
        raise ValueError("reference: expected at least one tool")
    return _matches(actions, reference) / len(reference)


def is_success(match: float, reference_success: bool = True, threshold: float = 0.7) -> bool:
    """Success = m ≥ 0.7 and the reference run succeeded."""
    return match >= threshold and bool(reference_success)


def model_match_ratio(actions: Sequence[Any], reference: Sequence[Any],
                      teacher_forced: Sequence[bool]) -> float:
    """Match ratio over the non-teacher-forced steps (0 when every step was forced)."""
    own = [(a, g) for a, g, tf in zip(actions, reference, teacher_forced) if not tf]
    return sum(a == g for a, g in own) / len(own) if own else 0.0


def next_tool_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax tool equals the label (ties: the lower tool id)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits: expected [N, V] with labels [N], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if len(labels) == 0:
        return 0.0
    return float((logits.argmax(-1) == labels).double().mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: ``1 − C(n − c, k) / C(n, k)`` (Chen et al. 2021)."""
    check_int("n", n, 1)
    check_int("c", c, 0, n)
    check_int("k", k, 1, n)
    return 1.0 - comb(n - c, k) / comb(n, k)
