"""Estimator registry: name → (function of validated rows, typed options dataclass).

``compute_advantages(name, batch, **options)`` is the one entry point: it validates the options
(unknown names and bad values raise ``ValueError``), validates the batch once, runs the
estimator in float64 and returns float32 advantages in the input row order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from grouprl.batch import RolloutBatch
from grouprl.validation import check_options

from .canon import CANONOptions, canon
from .gigpo import GiGPOOptions, gigpo
from .graphgpo import GraphGPOOptions, graphgpo
from .hgpo import HGPOOptions, hgpo
from .options import CommonOptions
from .outcome import (
    DrGRPOOptions,
    GRPOOptions,
    ReinforcePPOptions,
    RLOOOptions,
    dr_grpo,
    grpo,
    reinforce_pp,
    rloo,
)
from .rows import Rows, prepare_rows

__all__ = ["Estimator", "available_estimators", "compute_advantages", "register_estimator",
           "estimator_options", "estimator_spec"]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator and what it declares it needs.

    Attributes:
        needs: ``RolloutBatch`` columns beyond the common ones (``state``, ``next_state``).
        row_inputs: ``options → {option: input}``: per-row tensors a trainer must supply as
            options, by input name — ``response_length`` (tokens of each response; supplied
            when a row is a whole response) or ``token_entropy`` (mean per-token entropy of each
            response under the policy before the update).
        run_defaults: ``{option: setting}``: options that default to a run setting when unset
            (``history_length``: the agent's memory window; ``max_new_tokens``).
        single_turn: the estimator is defined on single-turn rows only (one response per task).
    """

    fn: Callable[[Rows, Any], torch.Tensor]
    options: type[CommonOptions]
    needs: tuple[str, ...] = ()
    summary: str = ""
    row_inputs: Callable[[Mapping[str, Any]], Mapping[str, str]] = lambda options: {}
    run_defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    single_turn: bool = False


_REGISTRY: dict[str, Estimator] = {}


def register_estimator(name: str, fn: Callable[[Rows, Any], torch.Tensor],
                       options: type[CommonOptions], needs: tuple[str, ...] = (),
                       summary: str = "", *,
                       row_inputs: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
                       run_defaults: Mapping[str, str] | None = None,
                       single_turn: bool = False) -> None:
    """Add an estimator: ``fn(rows, options) -> float64 [N]`` in input row order, with its
    declarations (see :class:`Estimator`)."""
    if not dataclasses.is_dataclass(options) or not issubclass(options, CommonOptions):
        raise TypeError("options: must be a dataclass subclassing CommonOptions")
    _REGISTRY[name] = Estimator(fn, options, tuple(needs), summary,
                                row_inputs or (lambda o: {}), dict(run_defaults or {}),
                                single_turn)


def _canon_inputs(options: Mapping[str, Any]) -> dict[str, str]:
    """CANON's metric: response length, or the old policy's mean token entropy (spec §A10)."""
    direction = options.get("direction", "length")
    return {"metric": "response_length" if direction == "length" else "token_entropy"}


register_estimator("grpo", grpo, GRPOOptions, (), "(s − mean_g) / (std_g + ε)")
register_estimator("dr_grpo", dr_grpo, DrGRPOOptions, (), "s − mean_g")
register_estimator("rloo", rloo, RLOOOptions, (), "n/(n−1) · (s − mean_g)")
register_estimator("reinforce_pp", reinforce_pp, ReinforcePPOptions, (),
                   "whiten_batch(s − mean_g)",
                   row_inputs=lambda o: {"response_length": "response_length"},
                   run_defaults={"comm": "comm"})
register_estimator("canon", canon, CANONOptions, (),
                   "[μ_w·inter + (1 − μ_w)·intra] / L_max over metric halves",
                   row_inputs=_canon_inputs, run_defaults={"l_max": "max_new_tokens"},
                   single_turn=True)
register_estimator("gigpo", gigpo, GiGPOOptions, ("state",), "A_E + ω · A_S(anchor state)")
register_estimator("hgpo", hgpo, HGPOOptions, ("state",),
                   "Σ_k w_k a_k / Σ_k w_k over context groups of depth k ≤ K",
                   run_defaults={"history_length": "history_length"})  # K = the memory window
register_estimator("graphgpo", graphgpo, GraphGPOOptions, ("state", "next_state"),
                   "β_s · A_step(10 ω^d(s')) + β_E · A_E")


def available_estimators() -> tuple[str, ...]:
    """Registered estimator names."""
    return tuple(_REGISTRY)


def _lookup(name: str) -> Estimator:
    if name not in _REGISTRY:
        raise ValueError(f"estimator: unknown name {name!r}; available: "
                         + ", ".join(_REGISTRY))
    return _REGISTRY[name]


def estimator_spec(name: str) -> Estimator:
    """The registered estimator ``name`` with its declarations."""
    return _lookup(name)


def estimator_options(name: str, **options: Any) -> CommonOptions:
    """Build and validate the options of estimator ``name`` (defaults filled in)."""
    spec = _lookup(name)
    check_options(f"estimator {name!r}", options,
                  [f.name for f in dataclasses.fields(spec.options)])
    return spec.options(**options)


def compute_advantages(name: str, batch: RolloutBatch, **options: Any) -> torch.Tensor:
    """Per-row advantages of estimator ``name`` (float32 tensor [N], input row order).

    Example::

        adv = compute_advantages("hgpo", batch, history_length=2)
    """
    spec = _lookup(name)
    opts = estimator_options(name, **options)
    if not isinstance(batch, RolloutBatch):
        raise ValueError(f"batch: expected a RolloutBatch, got {type(batch).__name__}")
    rows = prepare_rows(batch, spec.needs, estimator=name)
    if rows.n == 0:
        return torch.zeros(0, dtype=torch.float32)
    return spec.fn(rows, opts).to(torch.float32)
