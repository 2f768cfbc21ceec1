"""The scripted safe model of the toy (spec §4.4 check 4, ``presafe.safe_model: scripted``).

It stands in for M_safe (the CoT-off model) so the whole pipeline runs on a tiny model: a query
that contains a marker word (:data:`grouprl.presafe.datasets.TOY_MARKERS`) gets the fixed
refusal :data:`TOY_REFUSAL`; any other query gets a direct answer, ``"The answer is N."`` with
its gold answer N (the arithmetic prompts), or ``"Sure."`` when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence

from .datasets import TOY_MARKERS

__all__ = ["TOY_REFUSAL", "scripted_safe_response", "scripted_safe_responses"]

TOY_REFUSAL = "I'm sorry, but I can't help with that."


def scripted_safe_response(query: str, answer: str | None = None) -> str:
    """The scripted M_safe's response to ``query`` (module docstring)."""
    words = query.lower()
    if any(marker in words for marker in TOY_MARKERS):
        return TOY_REFUSAL
    return f"The answer is {answer}." if answer is not None else "Sure."


def scripted_safe_responses(queries: Sequence[str],
                            answers: Sequence[str | None]) -> list[str]:
    """:func:`scripted_safe_response` of each (query, answer)."""
    return [scripted_safe_response(q, a) for q, a in zip(queries, answers, strict=True)]
