"""Built-in synthetic tool-planning task for tests and the CPU recipe (spec §2.11) [GUESS].

* 12 tools in 3 categories (``fs-*``, ``mail-*``, ``web-*``), each with 1–2 argument schemas
  ("variants": the tool name with a set of argument keys, spec §2.2);
* a fixed weighted transition DAG (:data:`TRANSITIONS`), the stand-in for the MCP graph;
* tasks: a seeded weighted random walk of 2–5 tools from a start tool; the query names the first
  and the last tool's goal; each reference step has a variant and a recorded output;
* :class:`ToolSimulator`: replays the recorded output when the chosen tool equals the reference
  tool at that step, otherwise returns :data:`GENERIC_OUTPUT` (no error word).

Everything is a pure function of the seed (``random.Random(seed)``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from grouprl.validation import check_int, check_number

__all__ = ["GENERIC_OUTPUT", "TOOLS", "TRANSITIONS", "ToolSimulator", "ToolSpec", "ToolTask",
           "split_tasks", "synthetic_tasks", "tool_index", "variant_ids"]

GENERIC_OUTPUT = "Tool {tool} executed successfully."


@dataclass(frozen=True)
class ToolSpec:
    """An original tool: its name, its argument schemas (variants), a goal phrase for queries."""

    name: str
    variants: tuple[tuple[str, ...], ...]
    phrase: str


TOOLS = (
    ToolSpec("fs-list", (("path",), ("path", "recursive")), "list the folder {obj}"),
    ToolSpec("fs-read", (("path",), ("path", "encoding")), "read the file {obj}"),
    ToolSpec("fs-write", (("path", "content"),), "save the result to {obj}"),
    ToolSpec("fs-delete", (("path",),), "delete {obj}"),
    ToolSpec("mail-search", (("query",), ("query", "folder")), "search the mailbox for {obj}"),
    ToolSpec("mail-read", (("message_id",),), "open the mail about {obj}"),
    ToolSpec("mail-draft", (("to", "body"), ("to", "subject", "body")), "draft a reply on {obj}"),
    ToolSpec("mail-send", (("to", "body"), ("draft_id",)), "mail it to {obj}"),
    ToolSpec("web-search", (("query",), ("query", "limit")), "search the web for {obj}"),
    ToolSpec("web-fetch", (("url",),), "fetch the page on {obj}"),
    ToolSpec("web-summarize", (("text",), ("text", "max_words")), "summarize it for {obj}"),
    ToolSpec("web-download", (("url", "path"),), "download the data set {obj}"),
)

#: Weighted successors of each tool (a DAG; fs-delete and mail-send are terminal).
TRANSITIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "web-search": (("web-fetch", 3.0), ("web-download", 1.0)),
    "mail-search": (("mail-read", 3.0), ("fs-list", 1.0)),
    "web-download": (("fs-list", 3.0), ("fs-read", 1.0)),
    "fs-list": (("fs-read", 3.0), ("fs-delete", 1.0)),
    "web-fetch": (("web-summarize", 3.0), ("fs-write", 1.0)),
    "mail-read": (("mail-draft", 2.0), ("web-summarize", 1.0)),
    "fs-read": (("web-summarize", 2.0), ("mail-draft", 2.0), ("fs-write", 1.0)),
    "web-summarize": (("mail-draft", 3.0), ("fs-write", 1.0)),
    "fs-write": (("mail-draft", 2.0), ("fs-delete", 1.0)),
    "mail-draft": (("mail-send", 1.0),),
    "fs-delete": (),
    "mail-send": (),
}
_STARTS = ("web-search", "mail-search", "fs-list", "web-download")
_OBJECTS = ("budget.xlsx", "the Q3 report", "alice", "bob@corp", "weather data", "invoices",
            "release notes", "/home/docs", "the project plan", "meeting notes", "carol",
            "the sales figures")


def tool_index(name: str) -> int:
    """Id of the tool called ``name`` (position in :data:`TOOLS`)."""
    for i, tool in enumerate(TOOLS):
        if tool.name == name:
            return i
    raise ValueError(f"name: unknown tool {name!r}; known: "
                     + ", ".join(t.name for t in TOOLS))


def variant_ids() -> list[list[int]]:
    """Global variant ids per tool: tool i's variants are ``variant_ids()[i]``."""
    out, next_id = [], 0
    for tool in TOOLS:
        out.append(list(range(next_id, next_id + len(tool.variants))))
        next_id += len(tool.variants)
    return out


@dataclass(frozen=True)
class ToolTask:
    """One episode record (spec §2.2): query, reference tool ids, variants, outputs, success."""

    task_id: int
    name: str
    query: str
    reference: tuple[int, ...]
    reference_variants: tuple[int, ...]
    outputs: tuple[str, ...]
    success: bool = True

    @property
    def reference_names(self) -> list[str]:
        return [TOOLS[i].name for i in self.reference]


def _walk(rng: random.Random, length: int) -> list[str]:
    path = [rng.choice(_STARTS)]
    while len(path) < length and TRANSITIONS[path[-1]]:
        names, weights = zip(*TRANSITIONS[path[-1]])
        path.append(rng.choices(names, weights)[0])
    return path


def synthetic_tasks(seed: int = 0, num_tasks: int = 60, min_steps: int = 2,
                    max_steps: int = 5) -> list[ToolTask]:
    """``num_tasks`` tasks with 2–5-step references, deterministic in ``seed``."""
    check_int("seed", seed, 0)
    check_int("num_tasks", num_tasks, 1)
    check_int("min_steps", min_steps, 1)
    check_int("max_steps", max_steps, min_steps)
    rng, variants, tasks = random.Random(seed), variant_ids(), []
    while len(tasks) < num_tasks:
        path = _walk(rng, rng.randint(min_steps, max_steps))
        if len(path) < min_steps:
            continue
        first, last = rng.choice(_OBJECTS), rng.choice(_OBJECTS)
        ids = tuple(tool_index(n) for n in path)
        query = (f"Please {TOOLS[ids[0]].phrase.format(obj=first)}, then finally "
                 f"{TOOLS[ids[-1]].phrase.format(obj=last)}.")
        chosen = tuple(rng.choice(variants[i]) for i in ids)
        outputs = tuple(f"{n} returned item {rng.randint(100, 999)} for {first}" for n in path)
        k = len(tasks)
        tasks.append(ToolTask(k, f"task-{k:03d} {path[0]} to {path[-1]}", query, ids, chosen,
                              outputs))
    return tasks


def split_tasks(tasks: Sequence[ToolTask], test_fraction: float = 0.2, seed: int = 42
                ) -> tuple[list[ToolTask], list[ToolTask]]:
    """(train, test): a seeded shuffle, the last ``test_fraction`` for test (the code's 60/20/20
    with train and validation merged)."""
    check_number("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    cut = len(order) - max(1, round(test_fraction * len(order)))
    return [tasks[i] for i in order[:cut]], [tasks[i] for i in order[cut:]]


class ToolSimulator:
    """Execution simulator: replay the recorded output on a match, else a generic string."""

    def execute(self, task: ToolTask, step: int, tool: int) -> str:
        """Output of calling tool id ``tool`` at ``step`` of ``task``."""
        check_int("tool", tool, 0, len(TOOLS) - 1)
        if 0 <= step < len(task.reference) and task.reference[step] == tool:
            return task.outputs[step]
        return GENERIC_OUTPUT.format(tool=TOOLS[tool].name)
