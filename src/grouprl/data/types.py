"""The two record types of grouprl's datasets: a reasoning example and a preference pair."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ReasoningExample", "PreferencePair"]


@dataclass(frozen=True)
class ReasoningExample:
    """One single-turn task: a prompt whose reply is scored against a gold answer.

    Attributes:
        prompt: the question text as the model sees it (the trainer adds any template).
        answer: the gold answer as a string (an integer for the built-in data).
        solution: an expert reply (``<think>…</think><answer>…</answer>`` for the built-in
            data) used for behaviour cloning; ``None`` when the dataset has none.
        difficulty: an integer difficulty level, or ``None``.
        metadata: every other field of the record.
    """

    prompt: str
    answer: str
    solution: str | None = None
    difficulty: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair: for ``prompt``, ``chosen`` is preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str
    metadata: dict[str, Any] = field(default_factory=dict)
