"""Reasoning-format checks and format rewards (spec §C4).

Two response layouts are in use:

* **R1-Zero** (open-r1, TLTS): the completion is
  ``<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>``.
* **R1-distill** (DLER, DRPO, DOT, LASER): the chat template's generation prompt already opened
  ``<think>``, so the *response* must close it with ``</think>``; the answer is the text after
  the first ``</think>`` and must hold a boxed answer.

:func:`format_check` parses a response into ``(ok, think, answer, errors)``: a *strict* mode for
rewards and a whitespace-tolerant *lenient* mode for evaluation. :func:`format_reward` gives the
open-r1 scalar rewards. A format reward must never outweigh correctness (open-r1, TLTS weight
correctness above format); the shapers own that weighting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grouprl.rewards.extract import last_boxed, split_think

__all__ = [
    "FORMAT_STYLES",
    "REWARD_STYLES",
    "R1_ZERO_PATTERN",
    "r1_zero_match",
    "FormatResult",
    "format_check",
    "format_reward",
]

FORMAT_STYLES = ("r1_zero", "r1_distill")
REWARD_STYLES = ("r1_zero", "tag_count", "r1_distill")

R1_ZERO_PATTERN = re.compile(r"^<think>\n(.*?)\n</think>\n<answer>\n(.*?)\n</answer>$",
                             re.DOTALL | re.MULTILINE)
"""open-r1 ``format_reward`` regex, applied with ``re.match`` (groups added for the spans).

As in open-r1, ``$`` under ``MULTILINE`` also matches before a newline, so text on lines after
``</answer>`` still matches, and the lazy groups may contain further tags. The regex backtracks
quadratically on adversarial text (thousands of ``</think>``/``<answer>`` pairs take seconds),
so :func:`r1_zero_match` computes the same match with ``str.find`` in linear time."""

_THINK_OPEN = "<think>\n"
_SEPARATOR = "\n</think>\n<answer>\n"
_ANSWER_CLOSE = "\n</answer>"


def r1_zero_match(text: str) -> tuple[str, str] | None:
    """``(think, answer)`` groups of ``R1_ZERO_PATTERN.match(text)`` (unstripped), or ``None``;
    linear time.

    The regex matches iff the text starts with ``<think>\\n``, contains the separator
    ``\\n</think>\\n<answer>\\n`` after that, and after the separator contains
    ``\\n</answer>`` followed by the end or a newline. The lazy groups end at the first such
    separator and the first such close after it.
    """
    if not text.startswith(_THINK_OPEN):
        return None
    sep = text.find(_SEPARATOR, len(_THINK_OPEN))
    if sep < 0:
        return None
    start = sep + len(_SEPARATOR)
    close = text.find(_ANSWER_CLOSE, start)
    while close >= 0:
        end = close + len(_ANSWER_CLOSE)
        if end == len(text) or text[end] == "\n":
            return text[len(_THINK_OPEN):sep], text[start:close]
        close = text.find(_ANSWER_CLOSE, close + 1)
    return None


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class FormatResult:
    """Parsed response layout.

    Attributes:
        ok: the response has the required format.
        think: the reasoning text (stripped), or ``None`` when it cannot be located.
        answer: the answer text (stripped), or ``None`` when it cannot be located.
        errors: short codes, empty when ``ok``: ``"missing_think_open"``,
            ``"missing_think_close"``, ``"missing_answer"``, ``"duplicate_tag"``,
            ``"wrong_order"``, ``"text_outside_tags"``, ``"bad_whitespace"`` (strict R1-Zero:
            tags fine, newline layout not), ``"missing_boxed"`` (R1-distill).
    """

    ok: bool
    think: str | None
    answer: str | None
    errors: tuple[str, ...]


def _r1_zero_lenient(text: str) -> FormatResult:
    """Each tag exactly once, in order, only whitespace outside the two blocks."""
    counts = {tag: text.count(tag) for tag in _TAGS}
    errors: list[str] = []
    if counts["<think>"] == 0:
        errors.append("missing_think_open")
    if counts["</think>"] == 0:
        errors.append("missing_think_close")
    if counts["<answer>"] == 0 or counts["</answer>"] == 0:
        errors.append("missing_answer")
    if any(c > 1 for c in counts.values()):
        errors.append("duplicate_tag")
    if errors:
        think, _ = split_think(text)
        answer = None
        start = text.find("<answer>")
        end = text.find("</answer>", start + 8) if start >= 0 else -1
        if start >= 0 and end >= 0:
            answer = text[start + 8:end].strip()
        return FormatResult(False, think if counts["</think>"] else None, answer, tuple(errors))
    a, b, c, d = (text.find(tag) for tag in _TAGS)
    if not a < b < c < d:
        return FormatResult(False, None, None, ("wrong_order",))
    think = text[a + len("<think>"):b].strip()
    answer = text[c + len("<answer>"):d].strip()
    outside = text[:a] + text[b + len("</think>"):c] + text[d + len("</answer>"):]
    if outside.strip():
        return FormatResult(False, think, answer, ("text_outside_tags",))
    return FormatResult(True, think, answer, ())


def _r1_distill(text: str, strict: bool) -> FormatResult:
    """``</think>`` present, a boxed answer after it; strict: one ``</think>`` and at most one
    ``<think>``, before it."""
    think, after = split_think(text)
    if think is None:
        return FormatResult(False, None, None, ("missing_think_close",))
    errors: list[str] = []
    if strict:
        n_open, n_close = text.count("<think>"), text.count("</think>")
        if n_open > 1 or n_close > 1:
            errors.append("duplicate_tag")
        elif n_open == 1 and text.find("<think>") > text.find("</think>"):
            errors.append("wrong_order")
    answer = after.strip()
    if last_boxed(after) is None:
        errors.append("missing_boxed")
    return FormatResult(not errors, think, answer, tuple(errors))


def format_check(text: str, style: str = "r1_zero", strict: bool = True) -> FormatResult:
    """Check a response's reasoning layout (spec §C4).

    * ``"r1_zero"`` strict: open-r1's regex :data:`R1_ZERO_PATTERN` matches (``re.match``).
      Lenient: ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` each exactly once, in
      that order, with only whitespace outside the two blocks. When strict fails the errors say
      why (``"bad_whitespace"`` when only the newline layout is off).
    * ``"r1_distill"``: the response contains ``</think>`` and the text after the first one
      holds a boxed answer; strict also rejects a repeated ``</think>``/``<think>`` or a
      ``<think>`` after the close tag. ``answer`` is the text after ``</think>``.
    """
    if style == "r1_distill":
        return _r1_distill(text, strict)
    if style != "r1_zero":
        raise ValueError(f"format_check: style must be one of {FORMAT_STYLES}, got {style!r}")
    if strict:
        m = r1_zero_match(text)
        if m is not None:
            return FormatResult(True, m[0].strip(), m[1].strip(), ())
        lenient = _r1_zero_lenient(text)
        errors = lenient.errors if lenient.errors else ("bad_whitespace",)
        return FormatResult(False, lenient.think, lenient.answer, errors)
    return _r1_zero_lenient(text)


def _tag_count(text: str) -> float:
    """open-r1 ``tag_count_reward``: +0.25 for each of ``<think>\\n``, ``\\n</think>\\n``,
    ``\\n<answer>\\n``, ``\\n</answer>`` that occurs exactly once."""
    pieces = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")
    return 0.25 * sum(text.count(piece) == 1 for piece in pieces)


def format_reward(text: str, style: str = "r1_zero") -> float:
    """Scalar format reward.

    * ``"r1_zero"``: 1.0 iff the strict R1-Zero format holds (open-r1 ``format_reward``),
      else 0.0.
    * ``"tag_count"``: open-r1 ``tag_count_reward``, 0.25 per tag piece that occurs exactly once
      (0, 0.25, 0.5, 0.75 or 1.0).
    * ``"r1_distill"``: 1.0 iff the strict R1-distill format holds, else 0.0.
    """
    if style == "r1_zero":
        return 1.0 if r1_zero_match(text) is not None else 0.0
    if style == "tag_count":
        return _tag_count(text)
    if style == "r1_distill":
        return 1.0 if _r1_distill(text, strict=True).ok else 0.0
    raise ValueError(f"format_reward: style must be one of {REWARD_STYLES}, got {style!r}")
