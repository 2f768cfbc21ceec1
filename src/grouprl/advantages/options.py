"""Typed estimator options: one frozen dataclass per estimator, validated on construction.

Every option names its default's source (the paper's main experiments or the released code's
config) in the estimator's docstring. Bad values raise ``ValueError`` naming the option and the
accepted values.
"""

from __future__ import annotations

from dataclasses import dataclass

from grouprl.validation import check_choice, check_number, check_range

# check_choice / check_range live in grouprl.validation; re-exported for the old import path.
__all__ = ["CommonOptions", "check_choice", "check_range"]

MODES = ("mean_norm", "mean_std_norm")
COMPATS = ("native", "reference")


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
        check_number("invalid_penalty", self.invalid_penalty)
        check_number("epsilon", self.epsilon, 0.0)
        check_choice("compat", self.compat, COMPATS)
