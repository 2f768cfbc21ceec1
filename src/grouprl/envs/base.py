"""The text-environment protocol every grouprl environment implements.

An environment is a plain Python object with gym-like ``reset``/``step`` on text:

* ``reset(seed) -> (observation, info)``: the same seed always gives the same task, so the n
  members of a group are reset to one task by giving them one seed (spec-agentic-credit §1.1).
  ``info`` holds ``task`` (the instruction text), ``anchor`` (the state key used for GiGPO/HGPO/
  GraphGPO grouping: "the observation without history or hints", spec §1.2; any hashable) and
  ``admissible_actions`` (a list of strings, or ``None`` when the env has no such list).
* ``step(action) -> (observation, reward, done, info)``: ``info`` holds ``won`` (the episode is
  solved), ``valid`` (the action was understood by the env; an invalid action still costs a step),
  ``anchor`` and ``admissible_actions`` of the new observation, and optionally ``extra``: a
  small picklable dict the pool forwards unchanged to the rollout (e.g. a verifier's verdict).
* ``close()`` releases resources (subprocesses, JVMs).

Optional reset info key: ``category`` (a str naming the episode's task family, for per-task
metrics; multi-task envs set it, see :mod:`grouprl.envs.multitask`).

Environments are made by name through :func:`grouprl.envs.make_env` so that a process pool can
re-create them in a worker from ``(name, kwargs)``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

__all__ = ["TextEnv", "RESET_INFO_KEYS", "OPTIONAL_RESET_INFO_KEYS", "STEP_INFO_KEYS",
           "OPTIONAL_STEP_INFO_KEYS", "anchor_of"]

RESET_INFO_KEYS = ("task", "anchor", "admissible_actions")
OPTIONAL_RESET_INFO_KEYS = ("category",)
STEP_INFO_KEYS = ("won", "valid", "anchor", "admissible_actions")
OPTIONAL_STEP_INFO_KEYS = ("extra",)


@runtime_checkable
class TextEnv(Protocol):
    """A text environment (see the module docstring for the exact contract)."""

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


def anchor_of(info: dict[str, Any], observation: str) -> Hashable:
    """The grouping anchor of an observation: ``info['anchor']`` when given, else the text."""
    anchor = info.get("anchor")
    return observation if anchor is None else anchor
