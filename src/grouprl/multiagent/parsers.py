"""Output parsers ("projections") of the Dr. MAS agents: response text → (text passed on, valid).

Dr. MAS (arXiv 2602.08847; spec-seed-systems §1.4) gives every agent a parser that returns the
text the orchestra passes on (to the team context or to the environment) and a validity flag that
drives the invalid-output penalty (§1.5). The released rules, reproduced here:

- Solver (math): valid iff a ``\\boxed{…}`` answer can be extracted; the full response is passed on.
- Verifier (math, search): valid iff the open and close verdict tags are both present and the
  text has no CJK characters; the stripped full response is passed on.
- Search / Answer: valid iff the tag pair is present, exactly one ``<think>`` and one ``</think>``
  appear in that order, and no CJK characters; the passed-on text is ``<tag>content</tag>``, or
  ``""`` when the tag pair is missing (a bad think block keeps the tagged text, only invalid).

Verdicts are read separately (:func:`read_verdict`): the content of the *last* verdict tag pair,
lower-cased and stripped, if it is one of the accepted words, else ``None`` (unparsable).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from grouprl.rewards.extract import last_boxed

__all__ = ["Parser", "has_cjk", "tag_content", "boxed_parser", "verdict_parser",
           "tagged_think_parser", "plain_parser", "read_verdict"]

Parser = Callable[[str], tuple[str, bool]]

# CJK Unified Ideographs (+ extension A), Hiragana/Katakana, Hangul, CJK punctuation, full width.
_CJK = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                  "\uac00-\ud7af\uff00-\uffef]")


def has_cjk(text: str) -> bool:
    """True when ``text`` holds a CJK character (the released validity rules reject those)."""
    return _CJK.search(text) is not None


def tag_content(text: str, tag: str) -> str | None:
    """Content of the *last* ``<tag>…</tag>`` pair in ``text`` (not stripped), or ``None``."""
    matches = re.findall(f"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return matches[-1] if matches else None


def boxed_parser(text: str) -> tuple[str, bool]:
    """Solver: ``(full response, a \\boxed{} answer is extractable)``."""
    return text, last_boxed(text) is not None


def verdict_parser(tag: str) -> Parser:
    """Verifier: ``(stripped response, both verdict tags present and no CJK)``."""
    def parse(text: str) -> tuple[str, bool]:
        has_pair = f"<{tag}>" in text and f"</{tag}>" in text
        return text.strip(), has_pair and not has_cjk(text)
    return parse


def _think_ok(text: str) -> bool:
    """Exactly one ``<think>`` and one ``</think>``, the open before the close."""
    return (text.count("<think>") == 1 and text.count("</think>") == 1
            and text.index("<think>") < text.index("</think>"))


def tagged_think_parser(tag: str) -> Parser:
    """Search / Answer agents: ``(<tag>content</tag> or "", valid)`` (module docstring)."""
    def parse(text: str) -> tuple[str, bool]:
        content = tag_content(text, tag)
        if content is None:
            return "", False
        return f"<{tag}>{content.strip()}</{tag}>", _think_ok(text) and not has_cjk(text)
    return parse


def plain_parser(text: str) -> tuple[str, bool]:
    """A parser for free-text agents: ``(stripped text, True)``."""
    return text.strip(), True


def read_verdict(text: str, tag: str, choices: Sequence[str]) -> str | None:
    """The verdict in the last ``<tag>…</tag>`` if it is one of ``choices`` (case-insensitive,
    stripped), else ``None`` (unparsable: the orchestra applies its ``unparsed_verdict``)."""
    content = tag_content(text, tag)
    if content is None:
        return None
    word = content.strip().lower()
    return word if word in choices else None
