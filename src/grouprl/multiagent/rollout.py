"""The team environment loop (Dr. MAS ``MultiAgentTrajectoryCollector``; spec-seed-systems §1.3).

For one iteration::

    each task seed is repeated group_size times (consecutive blocks share group_id);
    each environment gets a fresh traj_id; envs are reset with their task's seed
    for t = 1 .. max_steps:
        active := ¬done
        actions, calls := orchestra on the active items (step t, fresh team context)
        step every active env with its action; episode reward += r; length += 1
        one row per (call, item the agent ran on), in call order
        done ∨= env done; stop when every env is done
    success := info["won"] of each trajectory's last active step

Environments follow :class:`grouprl.envs.base.TextEnv` (``reset(seed)``, ``step(action)``,
``close()``); ``make_env()`` builds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from grouprl.envs.base import TextEnv
from grouprl.validation import check_int

from .orchestra import Generate, Orchestra, run_step
from .rows import AgentRow, Episode

__all__ = ["TeamRollout", "collect_team_rollouts"]


@dataclass(frozen=True)
class TeamRollout:
    """The rows of one iteration (in call order) and one :class:`Episode` per trajectory."""

    rows: list[AgentRow]
    episodes: list[Episode]


def collect_team_rollouts(make_env: Callable[[], TextEnv], orchestra: Orchestra,
                          generate: Generate, task_seeds: Sequence[int], group_size: int,
                          max_steps: int, *, group_of: Mapping[str, str] | None = None,
                          first_traj_id: int = 0) -> TeamRollout:
    """Run the team on ``len(task_seeds) × group_size`` environments (module docstring).

    Args:
        make_env: builds one environment.
        orchestra: the team's orchestra.
        generate: ``generate(agent, prompts) -> responses``.
        task_seeds: one seed per task; the task's group id is its position in this list.
        group_size: rollouts per task (n).
        max_steps: environment steps at most.
        group_of: agent name → model group name (``ModelGroups.group_of``); default: each agent
            its own group, named after it.
        first_traj_id: the first trajectory id (ids are consecutive).
    """
    check_int("group_size", group_size, 1)
    check_int("max_steps", max_steps, 1)
    group_of = dict(group_of or {a.name: a.name for a in orchestra.agents})
    seeds = [int(s) for s in task_seeds for _ in range(group_size)]
    groups = [g for g in range(len(task_seeds)) for _ in range(group_size)]
    envs = [make_env() for _ in seeds]
    try:
        obs = [env.reset(seed)[0] for env, seed in zip(envs, seeds)]
        n = len(envs)
        done, won = [False] * n, [False] * n
        reward, length, turns = [0.0] * n, [0] * n, [0] * n
        rows: list[AgentRow] = []
        for t in range(1, max_steps + 1):
            active = [not d for d in done]
            result = run_step(orchestra, obs, active, t, generate)
            for call in result.calls:
                for i, prompt, response, text, valid in zip(call.items, call.prompts,
                                                            call.responses, call.texts,
                                                            call.valid):
                    rows.append(AgentRow(call.agent, group_of[call.agent], groups[i],
                                         first_traj_id + i, t, turns[i], prompt, response, text,
                                         valid))
                    turns[i] += 1
            for i in range(n):
                if not active[i]:
                    continue
                obs[i], r, d, info = envs[i].step(result.actions[i])
                reward[i] += float(r)
                length[i] += 1
                won[i] = bool(info.get("won", False))
                done[i] = done[i] or bool(d)
            if all(done):
                break
        episodes = [Episode(first_traj_id + i, groups[i], seeds[i], reward[i], length[i], won[i])
                    for i in range(n)]
        return TeamRollout(rows, episodes)
    finally:
        for env in envs:
            env.close()
