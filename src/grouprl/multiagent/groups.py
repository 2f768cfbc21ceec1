"""Model groups: which agents share a model, their settings, and adaptive mini-batching.

Dr. MAS (arXiv 2602.08847; spec-seed-systems §1.2, §1.6):

- ``share_models=False``: one model group per agent, even when two agents name the same model:
  own weights, own optimizer, own tokenizer (model families may differ: only text crosses).
- ``share_models=True``: agents naming the same model form one group (one set of weights, one
  optimizer). Their merged settings (run defaults + agent overrides) must be identical; a
  conflict is a start-up :class:`~grouprl.validation.UserError` naming the agents and the key.
- Per-agent overrides in the released list form (``{"lr": [1e-6, 1e-6]}``, one entry per agent
  in team order): :func:`overrides_from_lists`.
- Adaptive mini-batching: each group takes ``update_num`` optimizer steps per iteration whatever
  its row count; a frequently called agent gets bigger mini-batches, not more steps.
  Reference size per rank: ``b_w = ceil(n_w / (update_num · W / sp))``, chunks of ``b_w`` (so
  ``update_num`` steps exactly only when it divides); native [GUESS, spec §1.6]: ``update_num``
  near-equal chunks (sizes differ by at most one), exactly ``update_num`` steps when
  ``n_w >= update_num`` (``n_w`` one-row steps otherwise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from grouprl.validation import UserError, check_bool, check_choice, check_int

from .agents import AgentSpec, check_overrides
from .rows import AgentRow

__all__ = ["ModelGroup", "ModelGroups", "build_model_groups", "overrides_from_lists",
           "mini_batch_sizes", "split_mini_batches", "update_model_groups"]


@dataclass(frozen=True)
class ModelGroup:
    """One model with its optimizer: the agents it serves and their (common) settings."""

    name: str
    model: str
    agents: tuple[str, ...]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class ModelGroups:
    """The team's model groups, in order of first appearance in the agent list."""

    groups: tuple[ModelGroup, ...]
    share_models: bool

    @property
    def group_of(self) -> dict[str, str]:
        """Agent name → model group name."""
        return {a: g.name for g in self.groups for a in g.agents}

    def __getitem__(self, name: str) -> ModelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"model group {name!r}; groups: {[g.name for g in self.groups]}")

    def names(self) -> list[str]:
        return [g.name for g in self.groups]


def _merged(agent: AgentSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults, **agent.overrides}


def build_model_groups(agents: Sequence[AgentSpec], share_models: bool,
                       defaults: Mapping[str, Any] | None = None) -> ModelGroups:
    """Group ``agents`` by model (shared) or one per agent (non-shared); module docstring.

    Args:
        agents: the team's agents (unique names).
        share_models: agents naming one model share it.
        defaults: the run's settings (keys of :data:`~grouprl.multiagent.agents.OVERRIDE_KEYS`)
            that agent overrides replace.

    Raises:
        UserError: two agents sharing a model resolve a setting to different values.
    """
    check_bool("share_models", share_models)
    defaults = check_overrides("defaults", defaults or {})
    if len({a.name for a in agents}) != len(agents):
        raise UserError("multiagent.agents: agent names must be unique")
    members: dict[str, list[AgentSpec]] = {}
    for agent in agents:
        members.setdefault(agent.model if share_models else agent.name, []).append(agent)
    groups = []
    for name, team in members.items():
        first = _merged(team[0], defaults)
        for other in team[1:]:
            mine = _merged(other, defaults)
            for key in sorted(set(first) | set(mine)):
                if first.get(key) != mine.get(key):
                    raise UserError(
                        f"multiagent.agents: agents {team[0].name!r} and {other.name!r} share "
                        f"model {name!r} but set {key} to {first.get(key)!r} and "
                        f"{mine.get(key)!r}; give them one value or set share_models: false")
        groups.append(ModelGroup(name, team[0].model, tuple(a.name for a in team),
                                 MappingProxyType(first)))
    return ModelGroups(tuple(groups), share_models)


def overrides_from_lists(agents: Sequence[AgentSpec], table: Mapping[str, Any]
                         ) -> list[AgentSpec]:
    """Apply released-style per-agent overrides: each key maps to a list, one entry per agent
    in team order (``None`` keeps the agent's own value). ``UserError`` on a non-list leaf or a
    list of the wrong length; unknown keys and bad values fail the agents' own checks."""
    out = list(agents)
    for key, values in table.items():
        if not isinstance(values, (list, tuple)):
            raise UserError(f"multiagent.agent_overrides.{key}: must be a list with one entry per "
                            f"agent ({len(agents)}), got {values!r}")
        if len(values) != len(agents):
            raise UserError(f"multiagent.agent_overrides.{key}: has {len(values)} entries for "
                            f"{len(agents)} agents ({', '.join(a.name for a in agents)})")
        for k, value in enumerate(values):
            if value is not None:
                merged = {**out[k].overrides, key: value}
                out[k] = dataclasses.replace(out[k], overrides=merged)
    return out


def mini_batch_sizes(num_rows: int, update_num: int, *, compat: str = "native",
                     world_size: int = 1, sequence_parallel: int = 1) -> list[int]:
    """Mini-batch sizes of one group's ``num_rows`` rows (module docstring); one per step.

    native: ``update_num`` near-equal sizes (the first ``n mod u`` one larger), zeros dropped.
    reference: per-rank ``b = ceil(n / (u·W/sp))`` over the rank's ``n/W`` rows (``n`` is a
    multiple of W after the reference padding), the last chunk holding the remainder.
    """
    check_int("num_rows", num_rows, 0)
    check_int("update_num", update_num, 1)
    check_choice("compat", compat, ("native", "reference"))
    check_int("world_size", world_size, 1)
    check_int("sequence_parallel", sequence_parallel, 1)
    if compat == "native":
        base, extra = divmod(num_rows, update_num)
        return [s for s in (base + (k < extra) for k in range(update_num)) if s > 0]
    per_rank = num_rows // world_size
    size = math.ceil(num_rows / (update_num * world_size / sequence_parallel))
    if per_rank == 0:
        return []
    full, rest = divmod(per_rank, size)
    return [size] * full + ([rest] if rest else [])


def split_mini_batches(indices: Sequence[int], update_num: int, **kwargs: Any
                       ) -> list[list[int]]:
    """``indices`` cut in order into the chunks of :func:`mini_batch_sizes` (W = 1 shard)."""
    out, start = [], 0
    for size in mini_batch_sizes(len(indices), update_num, **kwargs):
        out.append(list(indices[start:start + size]))
        start += size
    return out


StepFn = Callable[[ModelGroup, list[int]], Mapping[str, float]]


def update_model_groups(rows: Sequence[AgentRow], groups: ModelGroups, update_num: int,
                        step_fn: StepFn, *, compat: str = "native"
                        ) -> dict[str, list[Mapping[str, float]]]:
    """Each model group's update, independently: its rows cut by :func:`split_mini_batches`,
    one ``step_fn(group, row_indices)`` (one optimizer step of that group's optimizer) per
    mini-batch. Returns the step metrics per group (an empty list for a group with no rows)."""
    by_group: dict[str, list[int]] = {g.name: [] for g in groups.groups}
    for i, row in enumerate(rows):
        if row.model_group not in by_group:
            raise ValueError(f"rows: row {i} names model group {row.model_group!r}; groups: "
                             f"{groups.names()}")
        by_group[row.model_group].append(i)
    return {g.name: [dict(step_fn(g, chunk)) for chunk in
                     split_mini_batches(by_group[g.name], update_num, compat=compat)]
            for g in groups.groups}
