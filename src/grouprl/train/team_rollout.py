"""Team rollouts with real models: generation per model group, token records, per-group rows,
and the held-out pass@k / avg@k evaluation (Dr. MAS; spec-seed-systems §1.3, §1.7).

:class:`TeamGenerator` is the ``generate(agent, prompts)`` of
:func:`grouprl.multiagent.collect_team_rollouts`: it samples with the model group that serves
the agent, the agent's ``temperature`` / ``top_p`` / ``max_new_tokens`` and stop strings (the
agent's closing tag, e.g. ``</verify>``, plus ``rollout.stop``), the group's own
``torch.Generator``, and the prompt in the group's chat template. It records the token ids each
call produced, in call order; the rollout loop appends rows in the same order (one per item an
agent ran on), so record ``i`` is the tokens of row ``i`` exactly as sampled — no
re-tokenisation, and each group's tokens come from its own tokenizer.

:func:`group_rollout` gathers one model group's rows into the learner's
:class:`grouprl.batch.Rollout` (left-padded prompts, right-padded responses, sampling log-probs,
advantages), so :func:`grouprl.train.learner.update_policy` trains it unchanged.

Data parallel (docs/distributed.md): rank r rolls out its contiguous block ``[lo_r, hi_r)`` of
the iteration's tasks (``first_group=lo_r``: group ids ``lo_r + j`` and trajectory ids
``(lo_r + j)·n + i`` stay global, as in one process on all tasks); :func:`evaluate_team`
shards the held-out tasks the same way and reduces pass@k / avg@k over every rank's tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grouprl.batch import Rollout
from grouprl.distributed import LOCAL, Comm, shard_bounds
from grouprl.multiagent import (
    AgentRow,
    AgentSpec,
    Episode,
    TeamRollout,
    collect_team_rollouts,
    episode_successes,
    pass_and_avg_at_k,
    to_batch,
)
from grouprl.policy import generate, left_pad
from grouprl.train.config import TrainConfig
from grouprl.train.evaluate import eval_seeds
from grouprl.train.team_config import Team
from grouprl.train.team_models import Policies, format_prompt

__all__ = ["TokenRecord", "TeamGenerator", "team_rollout", "group_rollout", "evaluate_team",
           "agent_stops"]


@dataclass(frozen=True)
class TokenRecord:
    """The tokens of one agent invocation as sampled: real prompt ids, response ids (through
    the EOS / stop token), their sampling log-probs, and whether the length limit cut it."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    truncated: bool


def agent_stops(agent: AgentSpec, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Stop strings of ``agent``: its closing output tag (``</tag>``) and ``extra``."""
    closing = [t for t in agent.tags if t.startswith("</")]
    return tuple(dict.fromkeys([*closing[-1:], *extra]))


class TeamGenerator:
    """``generate(agent, prompts) -> texts`` over the team's model groups (module docstring).

    ``temperature`` (when given) replaces every agent's own, as evaluation does."""

    def __init__(self, cfg: TrainConfig, team: Team, policies: Policies,
                 generators: dict[str, torch.Generator], *, temperature: float | None = None
                 ) -> None:
        self.cfg, self.team, self.policies = cfg, team, policies
        self.generators, self.temperature = generators, temperature
        self.records: list[TokenRecord] = []

    def __call__(self, agent: AgentSpec, prompts: list[str]) -> list[str]:
        group = self.team.groups.group_of[agent.name]
        model, tok = self.policies[group]
        s = self.team.settings(agent.name)
        temperature = s["temperature"] if self.temperature is None else self.temperature
        ro = self.cfg.rollout
        greedy = temperature == 0
        texts = [format_prompt(tok, p, self.cfg.agent.use_chat_template) for p in prompts]
        gen = generate(model, tok, texts, max_new_tokens=s["max_new_tokens"],
                       temperature=1.0 if greedy else temperature, top_p=s["top_p"],
                       do_sample=not greedy, stop_strings=agent_stops(agent, ro.stop),
                       generator=self.generators[group], batch_size=ro.generation_batch_size,
                       max_prompt_tokens=ro.max_prompt_tokens)
        for i in range(len(gen)):
            pm, rm = gen.prompt_mask[i].bool(), gen.response_mask[i].bool()
            self.records.append(TokenRecord(gen.prompt_ids[i][pm].tolist(),
                                            gen.response_ids[i][rm].tolist(),
                                            gen.logprobs[i][rm].float().tolist(),
                                            bool(gen.truncated[i])))
        return list(gen.texts)

    def take(self) -> list[TokenRecord]:
        """The records since the last call, in call order."""
        out, self.records = self.records, []
        return out


def team_rollout(team: Team, generator: TeamGenerator, seeds: Sequence[int], group_size: int,
                 make_env: Any = None, first_group: int = 0
                 ) -> tuple[TeamRollout, list[TokenRecord]]:
    """One batch of team episodes and the token record of every row (aligned by index);
    ``first_group``: the group id of ``seeds[0]`` (a rank's first task; module docstring)."""
    generator.take()
    if not seeds:                     # a rank without tasks (fewer held-out tasks than ranks)
        return TeamRollout([], []), []
    with torch.no_grad():
        roll = collect_team_rollouts(make_env or team.make_env, team.orchestra, generator, seeds,
                                     group_size, team.max_steps, group_of=team.groups.group_of,
                                     first_traj_id=first_group * group_size)
    records = generator.take()
    if len(records) != len(roll.rows):
        raise RuntimeError(f"team rollout: {len(records)} token records for {len(roll.rows)} "
                           "rows; an orchestra must call agents only through team.call")
    if first_group:
        roll = TeamRollout(
            [dataclasses.replace(r, group_id=r.group_id + first_group) for r in roll.rows],
            [dataclasses.replace(e, group_id=e.group_id + first_group) for e in roll.episodes])
    return roll, records


def _row_key(row: AgentRow) -> tuple:
    return (row.traj_id, row.agent, row.env_step, row.prompt, row.response)


def records_for(rows: Sequence[AgentRow], originals: Sequence[AgentRow],
                records: Sequence[TokenRecord]) -> list[TokenRecord]:
    """The record of every row of ``rows`` (reference duplicates take their source's)."""
    table = {_row_key(r): rec for r, rec in zip(originals, records)}
    return [records[i] if i < len(originals) else table[_row_key(r)]
            for i, r in enumerate(rows)]


def group_rollout(rows: Sequence[AgentRow], records: Sequence[TokenRecord],
                  episodes: Sequence[Episode], advantages: torch.Tensor,
                  index: Sequence[int], pad_id: int) -> Rollout:
    """The learner's :class:`Rollout` of rows ``index`` (one model group); empty ``index``:
    a rank's empty share (data parallel), zero rows."""
    recs = [records[i] for i in index]
    prompt_ids, prompt_mask = left_pad([r.prompt_ids for r in recs], pad_id) if recs else \
        (torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long))
    width = max(max((len(r.response_ids) for r in recs), default=0), 1)
    response_ids = torch.full((len(recs), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(recs), width), dtype=torch.long)
    logprobs = torch.zeros((len(recs), width), dtype=torch.float32)
    for k, r in enumerate(recs):
        n = len(r.response_ids)
        response_ids[k, :n] = torch.as_tensor(r.response_ids, dtype=torch.long)
        response_mask[k, :n] = 1
        logprobs[k, :n] = torch.as_tensor(r.logprobs, dtype=torch.float32)
    return Rollout(batch=to_batch([rows[i] for i in index], episodes), prompt_ids=prompt_ids,
                   prompt_mask=prompt_mask, response_ids=response_ids,
                   response_mask=response_mask, logprobs=logprobs,
                   responses=[rows[i].response for i in index],
                   truncated=torch.tensor([r.truncated for r in recs], dtype=torch.bool),
                   advantages=advantages[list(index)].float())


def evaluate_team(cfg: TrainConfig, team: Team, policies: Policies, comm: Comm = LOCAL
                  ) -> dict[str, float]:
    """``val/pass@k``, ``val/avg@k`` (k = ``multiagent.eval_k`` runs of each of
    ``eval.episodes`` held-out tasks at ``eval.temperature``), ``val/reward_mean`` and
    ``val/invalid_rate``; its own generators (same weights → same numbers; the training RNG is
    untouched). Data parallel: each rank runs its block of the tasks (generators offset by the
    block's first task; rank 0 keeps the one-process streams) and the per-task successes, the
    rewards and the invalid counts of every rank are gathered (every rank calls)."""
    lo, hi = shard_bounds(cfg.eval.episodes, comm.world_size, comm.rank)
    gens = {name: torch.Generator(device=next(m.parameters()).device)
            .manual_seed(cfg.seed * 1_000_003 + 17 + k + 7_919 * lo)
            for k, (name, (m, _)) in enumerate(policies.items())}
    generator = TeamGenerator(cfg, team, policies, gens, temperature=cfg.eval.temperature)
    was = {name: m.training for name, (m, _) in policies.items()}
    roll, _ = team_rollout(team, generator,
                           eval_seeds(cfg.eval.episodes, cfg.eval.seed_offset)[lo:hi],
                           cfg.multiagent.eval_k, team.make_eval_env, first_group=lo)
    for name, (m, _) in policies.items():
        m.train(was[name])
    invalid: dict[str, list[int]] = {}
    for r in roll.rows:
        count = invalid.setdefault(r.agent, [0, 0])
        count[0] += not r.valid
        count[1] += 1
    part = (episode_successes(roll.episodes), [e.reward for e in roll.episodes], invalid)
    parts = comm.gather(part) if comm.distributed else [part]
    successes = {g: s for p in parts for g, s in p[0].items()}
    rewards = [x for p in parts for x in p[1]]
    k = pass_and_avg_at_k(successes)
    out = {"val/pass@k": k["pass@k"], "val/avg@k": k["avg@k"], "val/k": k["k"],
           "val/reward_mean": sum(rewards) / len(rewards)}
    totals: dict[str, list[int]] = {}
    for p in parts:                   # invalid_rates over every rank's rows
        for agent, (bad, total) in p[2].items():
            t = totals.setdefault(agent, [0, 0])
            t[0], t[1] = t[0] + bad, t[1] + total
    out.update({f"val/agent/{a}/invalid_rate": bad / total for a, (bad, total) in totals.items()})
    return out
