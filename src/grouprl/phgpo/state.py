"""The state text the tool head reads, rebuilt every step (spec §2.2).

Layout [GUESS: the wording is ours; the lengths are v12's]:

    Task: <task name, ≤ 80 chars>
    Query: <query, ≤ 300 chars>
    History:
    1. <tool name, ≤ 30 chars>: <output, ≤ 150 chars>     (the last 10 steps, or "(none)")
    Next tool?

The code's supervised data truncates history outputs at 100 characters and its rollouts at 150
(spec §2.2); one ``output_chars`` here serves both, so pass the same value in both places.
"""

from __future__ import annotations

from collections.abc import Sequence

from grouprl.validation import check_int

__all__ = ["state_text"]


def state_text(task_name: str, query: str, history: Sequence[tuple[str, str]], *,
               name_chars: int = 80, query_chars: int = 300, history_steps: int = 10,
               tool_chars: int = 30, output_chars: int = 150) -> str:
    """The prompt for the next-tool choice after ``history`` = [(tool name, output), ...]."""
    for name, value in (("name_chars", name_chars), ("query_chars", query_chars),
                        ("history_steps", history_steps), ("tool_chars", tool_chars),
                        ("output_chars", output_chars)):
        check_int(name, value, 1)
    recent = list(history)[-history_steps:]
    first = len(history) - len(recent) + 1
    lines = [f"{first + i}. {tool[:tool_chars]}: {out[:output_chars]}"
             for i, (tool, out) in enumerate(recent)]
    return "\n".join([f"Task: {task_name[:name_chars]}", f"Query: {query[:query_chars]}",
                      "History:", *(lines or ["(none)"]), "Next tool?"])
