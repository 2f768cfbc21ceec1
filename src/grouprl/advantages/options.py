"""Typed estimator options: one frozen dataclass per estimator, validated on construction.

Every option names its default's source (the paper's main experiments or the released code's
config) in the estimator's docstring. Bad values raise ``ValueError`` naming the option and the
accepted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from grouprl.validation import check_choice

__all__ = ["CommonOptions", "check_choice", "check_range"]  # check_choice re-exported

MODES = ("mean_norm", "mean_std_norm")
COMPATS = ("native", "reference")


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name}: must be {kind}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        span = f"{lo}, {hi}" if low is not None and high is not None else (
            f">{'' if low_open else '='} {low}" if low is not None else
            f"<{'' if high_open else '='} {high}")
        raise ValueError(f"{name}: must be in {span}, got {value!r}")


@dataclass(frozen=True)
class CommonOptions:
    """Options shared by every estimator.

    Attributes:
        invalid_penalty: c, subtracted from an invalid row's episode score and from its step
            return, never propagated to other rows (verl-agent ``invalid_action_penalty_coef``,
            default 0.1).
        epsilon: ε added to σ in ``(x − μ)/(σ + ε)`` (1e-6, all released estimators).
        compat: "native" (default) fixes the released code's flagged defects, each documented in
            the estimator's docstring; "reference" reproduces the released code's semantics.
    """

    invalid_penalty: float = 0.1
    epsilon: float = 1e-6
    compat: str = "native"

    def __post_init__(self) -> None:
        check_range("invalid_penalty", self.invalid_penalty)
        check_range("epsilon", self.epsilon, 0.0)
        check_choice("compat", self.compat, COMPATS)
