"""The orchestra protocol: which agents run on which items, in what order, for one env step.

Dr. MAS (arXiv 2602.08847; spec-seed-systems §1.2–1.3). Per environment step an orchestra gets
the batch of observations and the active mask, and calls agents on boolean masks over the batch.
Each call:

1. generates only for the masked *active* items (the batch is compacted, generated, scattered
   back; a model group's data-parallel padding is the generate function's business);
2. parses every response into ``(text, valid)`` with the agent's parser;
3. appends ``The output of "<agent>": <text>`` as one line to the team context of every item it
   ran on (the team context is reset to empty at the start of every step);
4. records one :class:`AgentCall`, which becomes one training row per item it ran on.

Agents share only text through the team context. The orchestra returns the text action of every
item (``""`` where it set none).

A user orchestra is any object with an ``agents`` tuple and ``run(team) -> list[str]``; see
``docs/multi-agent.md`` for an example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .agents import AgentSpec

__all__ = ["AgentCall", "Generate", "ItemOutput", "Orchestra", "StepResult", "Team",
           "context_line", "run_step", "check_team_agents"]

#: ``generate(agent, prompts) -> responses``: one response per prompt, for the model group that
#: serves ``agent`` with the agent's own sampling settings.
Generate = Callable[[AgentSpec, list[str]], list[str]]


def context_line(agent: str, text: str) -> str:
    """The team-context line one agent output adds (spec §1.2)."""
    return f'The output of "{agent}": {text}'


@dataclass(frozen=True)
class ItemOutput:
    """One item's result of an agent call: the raw response, the parsed text and validity."""

    response: str
    text: str
    valid: bool


@dataclass(frozen=True)
class AgentCall:
    """One agent call over a subset of the step's items (one training row per item).

    ``items`` are indices into the step's batch; the other lists are aligned with them.
    """

    agent: str
    items: tuple[int, ...]
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    texts: tuple[str, ...]
    valid: tuple[bool, ...]


@dataclass
class Team:
    """The state of one orchestra run (one environment step) over a batch of items.

    Attributes:
        observations: the environment's observation text per item.
        active: which items are still running (done items are never generated for).
        step: the 1-based environment step number (the ``{step}`` slot).
        generate: the generation callable (:data:`Generate`).
        context: the team context per item (lines joined by ``"\\n"``).
        calls: the agent calls made so far, in order.
    """

    observations: list[str]
    active: list[bool]
    step: int
    generate: Generate
    context: list[str] = field(default_factory=list)
    calls: list[AgentCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.active) != len(self.observations):
            raise ValueError(f"active: has {len(self.active)} items, observations has "
                             f"{len(self.observations)}")
        self.context = [""] * len(self.observations)

    def __len__(self) -> int:
        return len(self.observations)

    def call(self, agent: AgentSpec, mask: Sequence[bool]) -> list[ItemOutput | None]:
        """Run ``agent`` on the items where ``mask`` and ``active`` hold (module docstring).

        Returns one :class:`ItemOutput` per item, ``None`` where the agent did not run.
        """
        if len(mask) != len(self):
            raise ValueError(f"mask: has {len(mask)} items, the team has {len(self)}")
        items = [i for i, (m, a) in enumerate(zip(mask, self.active)) if m and a]
        out: list[ItemOutput | None] = [None] * len(self)
        if not items:
            return out
        prompts = [agent.prompt(self.observations[i], self.context[i], self.step) for i in items]
        responses = [str(r) for r in self.generate(agent, prompts)]
        if len(responses) != len(prompts):
            raise ValueError(f"generate: returned {len(responses)} responses for "
                             f"{len(prompts)} prompts of agent {agent.name!r}")
        parsed = [agent.parse(r) for r in responses]
        for i, response, (text, valid) in zip(items, responses, parsed):
            line = context_line(agent.name, text)
            self.context[i] = f"{self.context[i]}\n{line}" if self.context[i] else line
            out[i] = ItemOutput(response, text, valid)
        self.calls.append(AgentCall(agent.name, tuple(items), tuple(prompts), tuple(responses),
                                    tuple(t for t, _ in parsed), tuple(v for _, v in parsed)))
        return out


@runtime_checkable
class Orchestra(Protocol):
    """Decides, per environment step, which agents run on which items and in what order."""

    agents: tuple[AgentSpec, ...]

    def run(self, team: Team) -> list[str]:
        """Call agents through ``team.call`` and return the text action of every item."""
        ...


@dataclass(frozen=True)
class StepResult:
    """What one orchestra run produced: actions for the env, the calls, the final contexts."""

    actions: list[str]
    calls: list[AgentCall]
    context: list[str]


def check_team_agents(agents: Sequence[AgentSpec]) -> tuple[AgentSpec, ...]:
    """The agents as a tuple; ``ValueError`` when one is not an AgentSpec or a name repeats."""
    seen: set[str] = set()
    for agent in agents:
        if not isinstance(agent, AgentSpec):
            raise ValueError(f"agents: expected AgentSpec objects, got {type(agent).__name__}")
        if agent.name in seen:
            raise ValueError(f"agents: the name {agent.name!r} is used twice; agent names must "
                             "be unique in a team")
        seen.add(agent.name)
    return tuple(agents)


def run_step(orchestra: Orchestra, observations: Sequence[str], active: Sequence[bool],
             step: int, generate: Generate) -> StepResult:
    """Run ``orchestra`` for one environment step with a fresh (empty) team context."""
    team = Team(list(observations), [bool(a) for a in active], int(step), generate)
    actions = list(orchestra.run(team))
    if len(actions) != len(team):
        raise ValueError(f"orchestra: returned {len(actions)} actions for {len(team)} items")
    return StepResult(["" if a is None else str(a) for a in actions], team.calls, team.context)
