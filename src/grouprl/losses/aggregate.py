"""Loss aggregation (spec-losses §2): a pure function of ``(loss_mat, mask, mode, global counts)``.

Modes and per-token weights (``m`` the mask, ``L_i = Σ_t m_{i,t}``, ``B'`` the sequence count):

============================  ===================================  ========================
mode                          value                                weight of token (i, t)
============================  ===================================  ========================
``token-mean``                ``Σ m·ℓ / N_tok``                    ``1/N_tok``
``seq-mean-token-sum``        ``(1/B') Σ_i Σ_t m·ℓ``               ``1/B'``
``seq-mean-token-mean``       ``(1/B') Σ_i (1/L_i) Σ_t m·ℓ``       ``1/(B'·L_i)``
``seq-mean-token-sum-norm``   ``(1/B') Σ_i (1/C) Σ_t m·ℓ``         ``1/(B'·C)`` (Dr. GRPO)
============================  ===================================  ========================

Gradient accumulation and data parallelism (§2.2): compute the counts of the whole mini-batch
(one optimizer step) once, e.g. with :func:`normalizer_counts` summed over micro-batches and
all-reduced over ranks, and pass them as ``global_tokens`` / ``global_seqs`` to every micro-batch.
Then the *sum* of the micro-batch losses equals the single-batch loss, value and gradient, for
every mode. If the framework averages gradients over ``dp_size`` ranks, multiply each
micro-batch loss by ``dp_size`` (verl's engine path does this).

Masked positions never reach the arithmetic: ``torch.where(mask, loss_mat, 0)``, so NaN or inf
padding changes nothing. Every denominator is clamped to at least 1, in every compat, so a fully
masked micro-batch gives loss 0 and zero gradient (verl and TRL give NaN there).

``(mode, compat, max_len)`` are validated once into an :class:`AggregateOptions`
(:func:`aggregate_options`, cached per distinct value), so calling :func:`aggregate` on every
micro-batch does no option checking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grouprl.validation import check_choice, check_int, check_number, memoize

__all__ = ["AGG_MODES", "COMPATS", "AggregateOptions", "aggregate", "aggregate_options",
           "normalizer_counts", "check_choice", "bool_mask"]  # check_choice: old import path

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
COMPATS = ("native", "verl", "trl")

Count = int | float | torch.Tensor


def bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask != 0`` as a bool tensor (returned as is when already bool)."""
    return mask if mask.dtype == torch.bool else mask != 0


@dataclass(frozen=True)
class AggregateOptions:
    """The validated options of :func:`aggregate`: ``mode`` (one of ``AGG_MODES``), ``compat``
    ("native", "verl" or "trl") and ``max_len`` (Dr. GRPO's ``C``; None = the padded width)."""

    mode: str
    compat: str = "native"
    max_len: int | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, AGG_MODES)
        check_choice("compat", self.compat, COMPATS)
        check_int("max_len", self.max_len, 1, none_ok=True)


@memoize
def aggregate_options(mode: str, compat: str = "native",
                      max_len: int | None = None) -> AggregateOptions:
    """:class:`AggregateOptions`, validated once per distinct ``(mode, compat, max_len)``."""
    return AggregateOptions(mode, compat, max_len)


def _check_count(name: str, value: Count | None) -> None:
    """A per-call count (data, not an option): None, a tensor, or a finite number >= 0."""
    if value is not None and not isinstance(value, torch.Tensor):
        check_number(name, value, 0, none_ok=True, note="a tensor is accepted too")


def _at_least_one(value: Count, like: torch.Tensor) -> torch.Tensor:
    """``max(value, 1)`` as a tensor on ``like``'s device and dtype (no host sync)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp(min=1)


def normalizer_counts(mask: torch.Tensor, *, compat: str = "native"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(N_tok, B')`` of one (micro-)batch, to be summed into the global counts.

    ``N_tok = Σ_{i,t} m_{i,t}``. ``B'`` is the number of rows with ``L_i > 0`` under "native" and
    "verl" (verl drops empty rows, §2.1) and every row under "trl" (TRL counts empty rows).
    """
    check_choice("compat", compat, COMPATS)
    m = bool_mask(mask)
    return m.sum(), _seq_count(m, compat)


def _seq_count(m: torch.Tensor, compat: str) -> torch.Tensor:
    """``B'``: rows with ``L_i > 0`` (native, verl) or every row (trl); ``m`` bool."""
    return torch.tensor(m.shape[0], device=m.device) if compat == "trl" else m.any(-1).sum()


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str,
              global_tokens: Count | None = None, global_seqs: Count | None = None,
              max_len: int | None = None, *, compat: str = "native") -> torch.Tensor:
    """Aggregate a per-token loss ``loss_mat`` (N, T) over ``mask`` (N, T) into a scalar (§2.1).

    Args:
        loss_mat: per-token loss, already multiplied by any IS weight. Masked entries may hold
            anything, NaN and inf included.
        mask: (N, T), bool or 0/1 float; nonzero marks tokens that carry loss.
        mode: one of ``AGG_MODES`` (see the module table).
        global_tokens: ``N_tok`` of the whole mini-batch (``token-mean``); default: this batch's.
        global_seqs: ``B'`` of the whole mini-batch (the seq-mean modes); default: this batch's
            count as :func:`normalizer_counts` gives it for ``compat``.
        max_len: Dr. GRPO's constant ``C`` (the generation budget, TRL
            ``max_completion_length``, verl ``loss_scale_factor``). Default ``T = mask.shape[-1]``
            as in verl; pass it explicitly when micro-batches are padded to different lengths.
        compat: "native" (default), "verl" or "trl", for the documented differences (§2.1):

            * ``seq-mean-token-mean``: native divides by ``max(L_i, 1)``, verl by ``L_i + 1e-8``,
              TRL by ``max(L_i, 1)``.
            * ``B'`` (when ``global_seqs`` is None): native and verl count non-empty rows, TRL
              counts every row (an empty row adds 0 and still counts).
            * ``seq-mean-token-sum-norm``: native and TRL give ``Σ m·ℓ / (B'·C)`` (paper, TRL
              ``dr_grpo``); verl gives ``Σ m·ℓ / C`` without the ``1/B`` factor.

    Returns:
        0-d tensor in ``loss_mat``'s dtype.
    """
    o = aggregate_options(mode, compat, max_len)
    _check_count("global_tokens", global_tokens)
    _check_count("global_seqs", global_seqs)
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} must equal loss_mat's 2-D shape "
                         f"{tuple(loss_mat.shape)}")
    mode, compat = o.mode, o.compat
    m = bool_mask(mask)
    masked = torch.where(m, loss_mat, 0.0)                            # m·ℓ, NaN-safe
    if mode == "token-mean":
        n_tok = m.sum() if global_tokens is None else global_tokens
        return masked.sum() / _at_least_one(n_tok, masked)            # Σ m·ℓ / N_tok
    row_sum = masked.sum(-1)                                          # Σ_t m·ℓ
    if global_seqs is None:
        global_seqs = _seq_count(m, compat)
    n_seq = _at_least_one(global_seqs, masked)
    if mode == "seq-mean-token-sum":
        return row_sum.sum() / n_seq                                  # (1/B') Σ_i Σ_t m·ℓ
    if mode == "seq-mean-token-mean":
        lengths = m.sum(-1).to(masked.dtype)
        lengths = lengths + 1e-8 if compat == "verl" else lengths.clamp(min=1)
        return (row_sum / lengths).sum() / n_seq                      # (1/B') Σ_i Σ_t m·ℓ / L_i
    c = float(max_len if max_len is not None else m.shape[-1])
    if compat == "verl":
        return row_sum.sum() / c                                      # verl: Σ m·ℓ / C, no 1/B
    return row_sum.sum() / (n_seq * c)                                # Dr. GRPO: Σ m·ℓ / (B'·C)
