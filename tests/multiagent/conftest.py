"""Scripted agents for the multi-agent tests: no language model, fixed replies per call."""

from __future__ import annotations

from collections.abc import Callable

import pytest


class Scripted:
    """``generate(agent, prompts)``: the agent's k-th call returns ``script[name][k]`` (a list
    with one reply per prompt) or ``script[name](prompts)`` when the script is a function.
    Records every (agent, prompts) call."""

    def __init__(self, script: dict[str, list[list[str]] | Callable[[list[str]], list[str]]]):
        self.script = script
        self.count: dict[str, int] = {}
        self.log: list[tuple[str, list[str]]] = []

    def __call__(self, agent, prompts: list[str]) -> list[str]:
        self.log.append((agent.name, list(prompts)))
        entry = self.script[agent.name]
        if callable(entry):
            return entry(prompts)
        k = self.count.get(agent.name, 0)
        self.count[agent.name] = k + 1
        replies = entry[k]
        assert len(replies) == len(prompts), (agent.name, k, len(replies), len(prompts))
        return replies


@pytest.fixture
def scripted():
    return Scripted
