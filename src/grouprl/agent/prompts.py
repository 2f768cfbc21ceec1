"""Step-wise prompt templates (verl-agent ``agent_system/environments/prompts/*.py`` design).

Every env step gets a fresh prompt: the task, the number of steps already taken, a window of the
most recent (observation, action) records from :class:`grouprl.agent.memory.HistoryMemory`,
the current observation, and the admissible actions when the env has a list. A template has two
``str.format`` strings: ``no_history`` (used at reset, when ``history_length <= 0`` and whenever
there is no record yet) and ``with_history``. The wording here is grouprl's own.

Fields:

* both templates: ``{task}``, ``{observation}``, ``{admissible_actions}``, ``{step}`` (steps
  already taken, 0 at reset, as verl-agent's ``step_count``) and ``{current_step}`` (``step+1``);
* ``with_history`` only: ``{history}`` (the rendered records), ``{history_length}`` (the window
  size) and ``{num_history}`` (records actually shown, ``min(step, history_length)``).

``{admissible_actions}`` renders as a comma-separated double-quoted list (``"up", "down"``). When
the env has no list (None), every template line using that field is dropped, so no dangling
empty line or empty brackets remain. ``system`` is plain text (not formatted).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .memory import HistoryMemory

__all__ = ["PromptTemplate", "TEMPLATES", "NO_HISTORY_FIELDS", "WITH_HISTORY_FIELDS",
           "get_template", "template_from_config", "apply_chat_template", "format_admissible",
           "render_from_memory"]

NO_HISTORY_FIELDS = ("task", "observation", "admissible_actions", "step", "current_step")
WITH_HISTORY_FIELDS = NO_HISTORY_FIELDS + ("history", "history_length", "num_history")

_FORMATTER = string.Formatter()


def _fields(fmt: str, name: str) -> list[str]:
    """Base names of the replacement fields of ``fmt`` (format specs included)."""
    out: list[str] = []
    try:
        for _, field, spec, _ in _FORMATTER.parse(fmt):
            if field is None:
                continue
            base = field.split(".", 1)[0].split("[", 1)[0]
            out.append(base)
            if spec:
                out.extend(_fields(spec, name))
    except ValueError as exc:
        raise ValueError(f"{name}: not a valid format string ({exc})") from None
    return out


def _check_fields(fmt: Any, name: str, allowed: Sequence[str]) -> None:
    if not isinstance(fmt, str):
        raise TypeError(f"{name}: must be a str, got {type(fmt).__name__}")
    for field in _fields(fmt, name):
        if field not in allowed:
            shown = "{" + field + "}" if field else "{} (positional)"
            raise ValueError(f"{name}: unknown field {shown}; allowed fields: "
                             + ", ".join("{" + a + "}" for a in allowed))


def format_admissible(actions: Sequence[str]) -> str:
    """``["up", "down"]`` -> ``'"up", "down"'``."""
    if isinstance(actions, str):
        raise TypeError("admissible_actions: must be a sequence of str, got a single str")
    return ", ".join(f'"{a}"' for a in actions)


def _format_lines(fmt: str, values: Mapping[str, Any], drop_field: str | None) -> str:
    lines = fmt.split("\n")
    if drop_field is not None:
        lines = [ln for ln in lines if drop_field not in _fields(ln, "template")]
    return "\n".join(ln.format_map(values) for ln in lines)


@dataclass(frozen=True)
class PromptTemplate:
    """A pair of step prompts (module docstring lists the fields).

    Attributes:
        name: identifier (the :data:`TEMPLATES` key for the built-ins).
        no_history: prompt without history records.
        with_history: prompt with the ``{history}`` window.
        system: optional system message for :func:`apply_chat_template`.
    """

    name: str
    no_history: str
    with_history: str
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty str, got {self.name!r}")
        _check_fields(self.no_history, "no_history", NO_HISTORY_FIELDS)
        _check_fields(self.with_history, "with_history", WITH_HISTORY_FIELDS)
        if self.system is not None and not isinstance(self.system, str):
            raise TypeError(f"system: must be None or a str, got {type(self.system).__name__}")

    def render(self, *, task: str, observation: str, history: str, step: int,
               history_length: int, num_history: int,
               admissible_actions: Sequence[str] | None) -> str:
        """The prompt text for one env step.

        ``no_history`` is used when ``history_length <= 0``, ``num_history <= 0`` or ``history``
        is empty; otherwise ``with_history``.
        """
        for name, value in (("step", step), ("history_length", history_length),
                            ("num_history", num_history)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: must be an integer, got {value!r}")
        if step < 0:
            raise ValueError(f"step: must be >= 0 (steps already taken), got {step}")
        values = {
            "task": task, "observation": observation, "step": step, "current_step": step + 1,
            "admissible_actions": "" if admissible_actions is None else format_admissible(
                admissible_actions),
            "history": history, "history_length": history_length, "num_history": num_history,
        }
        use_history = history_length > 0 and num_history > 0 and bool(history)
        fmt = self.with_history if use_history else self.no_history
        return _format_lines(fmt, values, "admissible_actions" if admissible_actions is None
                             else None)


def render_from_memory(template: PromptTemplate, memory: HistoryMemory, env_index: int, *,
                       task: str, observation: str,
                       admissible_actions: Sequence[str] | None) -> str:
    """:meth:`PromptTemplate.render` with the history fields taken from ``memory``."""
    records = memory.history(env_index)
    return template.render(task=task, observation=observation, history=memory.render(env_index),
                           step=memory.num_steps(env_index),
                           history_length=memory.history_length, num_history=len(records),
                           admissible_actions=admissible_actions)


_ASK_ACTION = ("Now it's your turn to act (choose exactly ONE action for this step). First "
               "reason step by step inside <think> </think> tags, then give your chosen action "
               "inside <action> </action> tags.")
_HISTORY_BLOCK = (
    "Prior to this step, you have already taken {step} step(s). Below are the most recent "
    "{num_history} observations and the corresponding actions you took:\n{history}\n")

_SOKOBAN_HEAD = """\
You are an expert Sokoban player.

# Symbols
- `#` wall: nothing can enter it.
- `_` floor: free space for you and the boxes.
- `O` target: a spot a box must end on.
- `X` box: push it onto a target.
- `√` box on target: a box already in place.
- `P` player: you.
- `S` player on target: you, standing on a target.

# Goal
Push every box (`X`) onto a target (`O`); the puzzle is solved when all boxes are on targets.

# Rules
You move one cell up, down, left or right. Walking into a box pushes it one cell if the cell \
behind it is free; you can never pull a box. A box pushed into a corner or along a wall may be \
stuck for good, so plan ahead.

# Current Step
"""
_SOKOBAN_TAIL = """\
Your admissible actions are ["up", "down", "left", "right"].

Now it's your turn to move (choose exactly ONE action for this step). First reason step by step \
inside <think> </think> tags: locate the boxes and targets, plan a path that pushes a box toward \
a target and avoids dead ends. Then give your chosen action inside <action> </action> tags."""

_COMPACT_HEAD = ("Sokoban: push boxes X onto targets O. # wall, _ floor, P you, √ box on target, "
                 "S you on target.\n")
_COMPACT_TAIL = "Moves: up, down, left, right. Answer like <action>up</action>."


def _text_game(intro: str) -> tuple[str, str]:
    no_history = (intro + "\nYour task is: {task}\n\nYour current observation is:\n"
                  "{observation}\nYour admissible actions are [{admissible_actions}].\n\n"
                  + _ASK_ACTION)
    with_history = (intro + "\nYour task is: {task}\n\n" + _HISTORY_BLOCK
                    + "You are now at step {current_step} and your current observation is:\n"
                    "{observation}\nYour admissible actions are [{admissible_actions}].\n\n"
                    + _ASK_ACTION)
    return no_history, with_history


TEMPLATES: dict[str, PromptTemplate] = {
    "sokoban": PromptTemplate(
        name="sokoban",
        no_history=_SOKOBAN_HEAD + "Your current observation is:\n{observation}\n" + _SOKOBAN_TAIL,
        with_history=(_SOKOBAN_HEAD + _HISTORY_BLOCK + "You are now at step {current_step} and "
                      "your current observation is:\n{observation}\n" + _SOKOBAN_TAIL),
    ),
    "sokoban_compact": PromptTemplate(
        name="sokoban_compact",
        no_history=_COMPACT_HEAD + "Grid:\n{observation}\n" + _COMPACT_TAIL,
        with_history=(_COMPACT_HEAD + "Moves made: {step}. Last moves:\n{history}\nGrid:\n"
                      "{observation}\n" + _COMPACT_TAIL),
    ),
    "textworld_express": PromptTemplate(
        "textworld_express",
        *_text_game("You are an expert agent playing a TextWorld Express text game."),
    ),
    "scienceworld": PromptTemplate(
        "scienceworld",
        *_text_game("You are an expert agent carrying out a science experiment in the "
                    "ScienceWorld text environment."),
    ),
    "default": PromptTemplate(
        "default",
        *_text_game("You are an agent acting in a text environment."),
    ),
    # single-turn reasoning (grouprl.envs.reasoning): the bare question; no history exists
    "reasoning": PromptTemplate("reasoning", no_history="{observation}",
                                with_history="{observation}"),
}


def get_template(name: str) -> PromptTemplate:
    """The built-in template called ``name``."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"template: unknown name {name!r}; choose one of "
                         f"{', '.join(sorted(TEMPLATES))}") from None


def template_from_config(spec: str | Mapping[str, Any]) -> PromptTemplate:
    """A template from a config value: a built-in name, or a mapping with ``no_history`` and
    ``with_history`` format strings and optional ``system`` and ``name`` (default "custom")."""
    if isinstance(spec, str):
        return get_template(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"template: must be a template name or a mapping, got "
                        f"{type(spec).__name__}")
    allowed = ("name", "no_history", "with_history", "system")
    unknown = sorted(str(k) for k in spec if k not in allowed)
    if unknown:
        raise ValueError(f"template: unknown key(s) {', '.join(unknown)}; allowed keys: "
                         + ", ".join(allowed))
    missing = [k for k in ("no_history", "with_history") if k not in spec]
    if missing:
        raise ValueError(f"template: missing key(s) {', '.join(missing)}; a template mapping "
                         "needs no_history and with_history")
    return PromptTemplate(name=spec.get("name", "custom"), no_history=spec["no_history"],
                          with_history=spec["with_history"], system=spec.get("system"))


def apply_chat_template(tokenizer: Any, text: str, system: str | None = None) -> str:
    """Wrap ``text`` (and an optional system message) in the tokenizer's chat template.

    With a tokenizer whose ``chat_template`` is set, returns
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``;
    otherwise (base models, ``tokenizer=None``) the plain ``system + "\\n\\n" + text``.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}]
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(out, str):
            raise TypeError(f"tokenizer: apply_chat_template(tokenize=False) must return a str, "
                            f"got {type(out).__name__}")
        return out
    return (system + "\n\n" if system else "") + text
