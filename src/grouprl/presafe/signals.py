"""Decision signals d(x) from the BERT-style classifier g (PreSafe step A, spec §4.2 item 4).

The classifier has two classes, ``COMPLY = 0`` and ``REFUSE = 1``; with its logits
``(l_comply, l_refuse)`` the signal of query x is

    d(x) = P_g(refuse | x) = softmax(l)_refuse = σ(l_refuse − l_comply)        (soft)
    d(x) = 1[P_g(refuse | x) ≥ 0.5]                                            (hard)

Worked example (spec §4.4 check 1): logits [−0.5, 1.5] → d = σ(2) = 0.880797; hard d = 1.
"""

from __future__ import annotations

import torch

from grouprl.validation import check_choice

__all__ = ["COMPLY", "REFUSE", "SIGNALS", "refusal_probability", "decision_signal"]

COMPLY, REFUSE = 0, 1
SIGNALS = ("soft", "hard")


def refusal_probability(logits: torch.Tensor) -> torch.Tensor:
    """(…, 2) classifier logits → (…) d(x) = softmax(l)_refuse."""
    if logits.shape[-1] != 2:
        raise ValueError(f"logits: expected a last dimension of 2 (comply, refuse), got "
                         f"{tuple(logits.shape)}")
    return torch.softmax(logits, dim=-1)[..., REFUSE]


def decision_signal(logits: torch.Tensor, kind: str = "soft") -> torch.Tensor:
    """The signal of ``kind``: ``soft`` = P_g(refuse | x), ``hard`` = 1[P_g(refuse | x) ≥ 0.5]
    (same dtype as ``logits``)."""
    check_choice("signal", kind, SIGNALS)
    d = refusal_probability(logits)
    return d if kind == "soft" else (d >= 0.5).to(d.dtype)
