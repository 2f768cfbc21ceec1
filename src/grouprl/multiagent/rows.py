"""Training rows of a team: one row per agent invocation (Dr. MAS; spec-seed-systems §1.3, §1.5).

A row is one agent call on one item, so an agent called twice in one environment step (the math
Solver after a reject) gives two rows. Rows keep *text* (prompt and response), not token ids:
each model group tokenises its own rows with its own tokenizer (heterogeneous teams).

**Row reward** (§1.5, ``EpisodeRewardManager`` + ``apply_invalid_action_penalty``)::

    r_row = R_episode(τ(row)) − c · [row invalid]

with c = 0.1 for math and 0.01 for search: the episode reward is broadcast to every agent's row,
with no discounting and no per-agent credit.

**Estimator batch** (:func:`to_batch`): ``group_id`` = the task group (uid), ``traj_id``, ``step``
= the row's invocation index in its trajectory (0, 1, …), ``reward`` = the episode reward on the
trajectory's invocation 0 and 0 elsewhere (so the estimator's ``ret_τ = Σ r`` is the episode
reward), ``invalid``, ``agent_id`` and ``success``; grouprl's estimators then compute
``score_i = ret_τ(i) − c·invalid_i``, exactly :func:`row_rewards`.

**Reference padding** (:func:`pad_to_divisor`, ``adjust_batch(mode="copy")``): per model group,
``(−n_w) mod d`` rows drawn at random without replacement are duplicated *before* the advantage,
so the duplicates enter μ and σ. A duplicate joins its own trajectory as an extra invocation
(reward 0, same validity), so trajectory averages count it as the reference does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from grouprl.batch import RolloutBatch
from grouprl.validation import check_int, check_number

__all__ = ["AgentRow", "Episode", "MATH_INVALID_PENALTY", "SEARCH_INVALID_PENALTY",
           "row_rewards", "to_batch", "pad_to_divisor", "rows_by_group", "invalid_rates"]

MATH_INVALID_PENALTY = 0.1
SEARCH_INVALID_PENALTY = 0.01


@dataclass(frozen=True)
class AgentRow:
    """One agent invocation on one item.

    Attributes:
        agent: the agent's name (``agent_id``).
        model_group: the model group that serves the agent (``wg_id``).
        group_id: the task group (all ``n`` rollouts of one task share it; ``uid``).
        traj_id: the trajectory (one environment rollout; ``traj_uid``).
        env_step: the 1-based environment step of the call.
        turn: the invocation index within the trajectory (0, 1, …), in call order.
        prompt, response: the text the agent saw and wrote.
        text, valid: the parser's output.
        duplicate: a reference-padding copy (:func:`pad_to_divisor`).
    """

    agent: str
    model_group: str
    group_id: int
    traj_id: int
    env_step: int
    turn: int
    prompt: str
    response: str
    text: str
    valid: bool
    duplicate: bool = False


@dataclass(frozen=True)
class Episode:
    """One trajectory's outcome: summed env reward, env steps taken, success flag (``won`` of
    its last active step), and the task seed it ran on."""

    traj_id: int
    group_id: int
    seed: int
    reward: float
    length: int
    won: bool


def _episodes_by_traj(episodes: Sequence[Episode]) -> dict[int, Episode]:
    table = {e.traj_id: e for e in episodes}
    if len(table) != len(episodes):
        raise ValueError("episodes: a traj_id appears twice")
    return table


def row_rewards(rows: Sequence[AgentRow], episodes: Sequence[Episode],
                invalid_penalty: float) -> list[float]:
    """``r_row = R_episode − c · [invalid]`` for every row (module docstring)."""
    check_number("invalid_penalty", invalid_penalty)
    table = _episodes_by_traj(episodes)
    return [table[r.traj_id].reward - invalid_penalty * (not r.valid) for r in rows]


def to_batch(rows: Sequence[AgentRow], episodes: Sequence[Episode]) -> RolloutBatch:
    """The estimator's :class:`~grouprl.batch.RolloutBatch` of ``rows`` (module docstring)."""
    table = _episodes_by_traj(episodes)
    missing = [r.traj_id for r in rows if r.traj_id not in table]
    if missing:
        raise ValueError(f"episodes: no episode for traj_id {missing[0]!r}")
    return RolloutBatch(
        group_id=[r.group_id for r in rows], traj_id=[r.traj_id for r in rows],
        step=[r.turn for r in rows],
        reward=[table[r.traj_id].reward if r.turn == 0 else 0.0 for r in rows],
        invalid=[not r.valid for r in rows], agent_id=[r.agent for r in rows],
        success=[table[r.traj_id].won for r in rows])


def rows_by_group(rows: Sequence[AgentRow]) -> dict[str, list[int]]:
    """Row indices per model group, groups in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault(r.model_group, []).append(i)
    return out


def pad_to_divisor(rows: Sequence[AgentRow], divisor: int, seed: int) -> list[AgentRow]:
    """Reference ``adjust_batch(mode="copy")`` per model group (module docstring).

    Each group w with n_w rows gets ``(−n_w) mod divisor`` duplicates of rows drawn with
    ``numpy.random.default_rng(seed)`` without replacement (with replacement when more copies
    than rows are needed, where the reference would fail). Duplicates are appended after all
    original rows, group by group, with ``duplicate=True`` and the next free ``turn`` of their
    trajectory.
    """
    check_int("divisor", divisor, 1)
    check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    out = list(rows)
    next_turn: dict[int, int] = {}
    for r in rows:
        next_turn[r.traj_id] = max(next_turn.get(r.traj_id, 0), r.turn + 1)
    for indices in rows_by_group(rows).values():
        extra = (-len(indices)) % divisor
        if not extra:
            continue
        picks = rng.choice(len(indices), extra, replace=extra > len(indices))
        for p in picks:
            src = rows[indices[int(p)]]
            out.append(dataclasses.replace(src, turn=next_turn[src.traj_id], duplicate=True))
            next_turn[src.traj_id] += 1
    return out


def invalid_rates(rows: Sequence[AgentRow]) -> Mapping[str, float]:
    """Share of invalid rows per agent (a metric, ``agent/<name>/invalid_rate``)."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r.agent, [0, 0])
        c[0] += not r.valid
        c[1] += 1
    return {a: bad / total for a, (bad, total) in counts.items()}
