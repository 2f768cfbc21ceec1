"""Agents of a multi-agent LLM system (Dr. MAS, arXiv 2602.08847; spec-seed-systems §1.2, §1.9).

An agent is a named role: a prompt template with three slots, an output parser returning
``(text passed on, valid)``, the model group that serves it, and per-agent overrides of the
optimisation and sampling settings. Agents share nothing but text (the team context), which is
what lets two agents run on different model families with different tokenizers.

Template slots are filled by literal replacement of ``{observation}``, ``{team_context}`` and
``{step}`` (the 1-based environment step), so other braces (``\\boxed{}``) need no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from grouprl.validation import check_int, check_number, check_options

from .parsers import Parser, plain_parser

__all__ = ["AgentSpec", "OVERRIDE_KEYS", "SLOTS", "check_overrides", "render_prompt"]

SLOTS = ("observation", "team_context", "step")
#: per-agent settings an agent may override (spec §1.2 "agent_specific_parameters")
OVERRIDE_KEYS = ("lr", "weight_decay", "micro_batch_size", "clip_ratio", "grad_clip",
                 "temperature", "top_p", "max_new_tokens")
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_overrides(owner: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an agent's overrides: known keys (:data:`OVERRIDE_KEYS`) and sane values.

    ``lr``, ``weight_decay`` >= 0; ``micro_batch_size``, ``max_new_tokens`` integers >= 1;
    ``clip_ratio`` > 0; ``grad_clip`` > 0 or None; ``temperature`` >= 0; ``top_p`` in (0, 1].
    """
    check_options(owner, overrides, OVERRIDE_KEYS)
    for key, value in overrides.items():
        name = f"{owner}.{key}"
        if key in ("lr", "weight_decay", "temperature"):
            check_number(name, value, 0.0)
        elif key in ("micro_batch_size", "max_new_tokens"):
            check_int(name, value, 1)
        elif key == "clip_ratio":
            check_number(name, value, 0.0, low_open=True)
        elif key == "grad_clip":
            check_number(name, value, 0.0, low_open=True, none_ok=True)
        elif key == "top_p":
            check_number(name, value, 0.0, 1.0, low_open=True)
    return dict(overrides)


@dataclass(frozen=True)
class AgentSpec:
    """One agent (role) of a team.

    Attributes:
        name: the role name, e.g. ``"Solver"``; the ``agent_id`` of its rows.
        template: the prompt, with the slots ``{observation}``, ``{team_context}``, ``{step}``
            (each optional; any other ``{word}`` is an error, to catch typos).
        parser: ``response -> (text passed on, valid)`` (:mod:`grouprl.multiagent.parsers`).
        model: the model name this agent runs on; agents naming one model share it when the
            team is built with ``share_models=True`` (:mod:`grouprl.multiagent.groups`).
        tags: the output tags the agent is asked to write, e.g. ``("<verify>", "</verify>")``
            (informational; the parser decides validity).
        overrides: per-agent settings (:data:`OVERRIDE_KEYS`) over the run's defaults.
    """

    name: str
    template: str
    parser: Parser = plain_parser
    model: str = "policy"
    tags: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name: an agent needs a non-empty name, got {self.name!r}")
        if not isinstance(self.template, str):
            raise ValueError(f"template: agent {self.name!r} needs a string template")
        unknown = [s for s in _SLOT.findall(self.template) if s not in SLOTS]
        if unknown:
            raise ValueError(f"template: agent {self.name!r} has unknown slot {{{unknown[0]}}}; "
                             f"slots are " + ", ".join("{" + s + "}" for s in SLOTS))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model: agent {self.name!r} needs a model name, got {self.model!r}")
        if not callable(self.parser):
            raise ValueError(f"parser: agent {self.name!r} needs a callable parser")
        checked = check_overrides(f"agent {self.name!r} overrides", self.overrides)
        object.__setattr__(self, "overrides", MappingProxyType(checked))

    def prompt(self, observation: str, team_context: str, step: int) -> str:
        """The filled template (:func:`render_prompt`)."""
        return render_prompt(self.template, observation, team_context, step)

    def parse(self, response: str) -> tuple[str, bool]:
        """``(text passed on, valid)`` of one response."""
        text, valid = self.parser(response)
        return str(text), bool(valid)


def render_prompt(template: str, observation: str, team_context: str, step: int) -> str:
    """Replace the three slots literally (no ``str.format``: other braces stay as written)."""
    return (template.replace("{observation}", observation)
            .replace("{team_context}", team_context).replace("{step}", str(step)))
