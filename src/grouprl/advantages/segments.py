"""Vectorised group operations: factorize keys, segment sums and statistics, group normalisation.

Everything here is a handful of ``index_add_`` / ``scatter_reduce_`` calls over float64 tensors:
no Python loop over rows. A *segment* is a dense int64 code 0..S-1 per element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Mode = Literal["mean_norm", "mean_std_norm"]
Compat = Literal["native", "reference"]
Singleton = Literal["raw", "zero"]

__all__ = ["SegmentStats", "pair_codes", "segment_sum", "segment_stats", "group_normalize"]


def pair_codes(a: torch.Tensor, b: torch.Tensor, num_b: int) -> tuple[torch.Tensor, int]:
    """Dense codes for the pairs (a_i, b_i), with ``0 <= b_i < num_b``; returns (codes, count)."""
    if a.numel() == 0:
        return a.clone(), 0
    if int(a.max()) >= (2**62) // max(num_b, 1):
        raise OverflowError("pair_codes: too many distinct keys for an int64 pair code")
    uniq, codes = torch.unique(a * num_b + b, return_inverse=True)
    return codes, int(uniq.numel())


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num: int) -> torch.Tensor:
    """``out[s] = Σ_{i: seg_i = s} values_i``."""
    return torch.zeros(num, dtype=values.dtype).index_add_(0, seg, values)


@dataclass
class SegmentStats:
    """Per-segment count, mean, std (unbiased or population), min, and whether all values equal."""

    count: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    low: torch.Tensor
    constant: torch.Tensor


def segment_stats(x: torch.Tensor, seg: torch.Tensor, num: int, *, unbiased: bool) -> SegmentStats:
    """Two-pass mean and variance per segment (float64), plus min/max for the constant test.

    ``std`` is ``sqrt(Σ(x-μ)²/(n-1))`` when ``unbiased`` (torch.std's default, used by GiGPO,
    GraphGPO and GRPO) and ``sqrt(Σ(x-μ)²/n)`` otherwise (HGPO). Segments of size 1 get std 0.
    """
    count = segment_sum(torch.ones_like(x), seg, num)
    mean = segment_sum(x, seg, num) / count.clamp_min(1.0)
    dev = x - mean[seg]
    denom = (count - 1.0) if unbiased else count
    std = (segment_sum(dev * dev, seg, num) / denom.clamp_min(1.0)).sqrt()
    low = torch.full((num,), float("inf"), dtype=x.dtype).scatter_reduce_(0, seg, x, "amin")
    high = torch.full((num,), float("-inf"), dtype=x.dtype).scatter_reduce_(0, seg, x, "amax")
    return SegmentStats(count=count, mean=mean, std=std, low=low, constant=low == high)


def group_normalize(value: torch.Tensor, row_seg: torch.Tensor, stats: SegmentStats, *,
                    mode: Mode, epsilon: float, compat: Compat, singleton: Singleton
                    ) -> torch.Tensor:
    """Relative advantage of each row's ``value`` against its segment's statistics.

    ``mean_norm``: A = value − μ.   ``mean_std_norm``: A = (value − μ) / (σ + ε).

    compat="reference" (verl-agent): a segment with one sample uses the ``singleton`` rule —
    "raw" (μ = 0, σ = 1: GRPO and GiGPO's episode level) or "zero" (A = 0: GiGPO's step level).
    compat="native": a segment whose samples are all equal (singletons included) has μ equal to
    that value exactly and no std division, so equal values give exactly 0 instead of the
    float-noise ±0.3 that (x − mean(x))/(std + ε) can produce for repeated non-dyadic values.
    """
    if compat == "native":
        constant = stats.constant[row_seg]
        mean = torch.where(constant, stats.low[row_seg], stats.mean[row_seg])
        adv = value - mean
        if mode == "mean_std_norm":
            adv = torch.where(constant, adv, adv / (stats.std[row_seg] + epsilon))
        return adv
    single = stats.count[row_seg] == 1
    mean, std = stats.mean[row_seg], stats.std[row_seg]
    if singleton == "raw":
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
    adv = value - mean
    if mode == "mean_std_norm":
        adv = adv / (std + epsilon)
    if singleton == "zero":
        adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv
