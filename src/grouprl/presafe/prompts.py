"""Prompts with chain-of-thought on or off, and the PreSafe alignment targets (spec §4.2).

* CoT **on** (the reasoning model's normal prompt): the chat template with
  ``add_generation_prompt=True`` and ``enable_thinking=True`` (a template that does not use the
  variable ignores it); a model whose template opens a think block (``…<think>\\n``) keeps it.
* CoT **off** (the safe model M_safe, "the same LRM with thinking disabled"): the chat template
  with ``enable_thinking=False`` (Qwen3 templates then end in an empty think block), and when
  the result does not already end with ``</think>`` an empty think block
  :data:`EMPTY_THINK` is prefilled (R1-distill style; SmolLM2's template has no thinking).
* A tokenizer without a chat template (the tiny model) gets the plain query text.

Targets (step B): a harmful query's target is a refusal placed after an empty think block —
:func:`refusal_target` writes only what the CoT-on prompt has not already opened
(``"\\n</think>\\n\\n" + refusal`` after a ``<think>`` opener, else ``EMPTY_THINK + refusal``),
so the decision is made before any chain-of-thought in behaviour as well.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["EMPTY_THINK", "render_prompt", "refusal_target", "opens_think"]

EMPTY_THINK = "<think>\n\n</think>\n\n"
_OPENER = re.compile(r"<think>\s*$")
_CLOSED = re.compile(r"</think>\s*$")


def opens_think(prompt: str) -> bool:
    """The rendered prompt ends with an open ``<think>`` (the template opened the block)."""
    return bool(_OPENER.search(prompt))


def render_prompt(tokenizer: Any, query: str, *, thinking: bool,
                  use_chat_template: bool = True) -> str:
    """The prompt text of ``query`` with chain-of-thought on or off (module docstring)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": query}],
                                             tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
        if not isinstance(text, str):
            raise TypeError(f"tokenizer: apply_chat_template(tokenize=False) must return a str, "
                            f"got {type(text).__name__}")
    else:
        text = query
    if thinking or _CLOSED.search(text):
        return text
    if opens_think(text):
        return text + "\n</think>\n\n"
    return text + EMPTY_THINK


def refusal_target(refusal: str, cot_prompt: str) -> str:
    """The harmful-query target after the CoT-on prompt ``cot_prompt``: an empty think block
    (closing the template's opener if it has one), then ``refusal``."""
    refusal = refusal.strip()
    return ("\n</think>\n\n" if opens_think(cot_prompt) else EMPTY_THINK) + refusal
