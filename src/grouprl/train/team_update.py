"""One team iteration's learning: advantages on the combined batch, then each model group's own
update with its own optimizer (Dr. MAS; spec-seed-systems §1.6 steps 5–6), and the metrics.

:func:`team_objectives`: the loss of ``algorithm.loss`` per model group, with the group's
``clip_ratio`` override as ``clip_low = clip_high = clip_ratio`` in its options.

:func:`update_groups`, for every model group ``g`` with rows ``I_g`` of the combined batch::

    Â            = team_advantages(all rows, episodes)[I_g]       (computed once, before)
    steps        = len(mini_batch_sizes(|I_g|, update_num, compat))  # adaptive mini-batching
    ℓ^old        = log-probs of g's model   (only when steps > 1 or ppo_epochs > 1)
    update_policy(model_g, optimizer_g, rows I_g, objective_g, num_mini_batches=steps,
                  micro_batch_size, grad_clip, temperature of g)

so every group takes ``update_num`` optimizer steps per epoch whatever its row count (native:
near-equal shuffled mini-batches, exactly ``mini_batch_sizes``; reference: the released number
of steps, with near-equal sizes [GUESS]). A group with no rows this iteration takes no step.

Metrics (:func:`team_metrics`), per agent ``a``: ``agent/a/rows``, ``invalid_rate``,
``reward_mean`` (row rewards ``R − c·invalid``), ``adv_abs_mean``, and its group's update:
``loss``, ``grad_norm``, ``clip_fraction``, ``entropy``, ``optimizer_steps``, ``lr``
(agents sharing a model report their group's values); team: ``episode/reward``,
``episode/length``, ``train/success_rate``, ``train/rows``, ``train/duplicate_rows``, and the
task's verdict rate (``math/approve_rate`` or ``search/answer_rate``: share of Verifier verdicts
that end refinement / route to Answer; unparsable verdicts count as the orchestra's default).

Data parallel (``comm``; docs/distributed.md), each rank holding the rows of its block of whole
task groups:

- advantages stay local: every baseline's statistics are per task group (and agent), so a rank
  computes on its rows exactly what one process computes on all. The reference padding is not
  local (``(−n_w) mod d`` duplicates of the *global* count ``n_w``, drawn from all of group w's
  rows), so with ``pad_divisor > 1`` every rank gathers every rank's rows and episodes, pads and
  computes on the concatenation (rank order) as one process would, and keeps the rows (original
  and duplicate) of its own task groups;
- the step count of group g is taken from its *global* row count ``Σ_r n_{g,r}`` (one
  all-reduce for all groups), so every rank takes the same ``update_num`` steps, a rank with no
  row of g included (it joins the learner's collectives with an empty share);
  :func:`~grouprl.train.learner.update_policy` then uses global normalisers, a global mini-batch
  permutation and the gradient all-reduce (:func:`update_groups`);
- :func:`reduce_team_metrics`: row and duplicate counts summed, rates weighted by their counts,
  the update's metrics (already global) taken as they are, times the slowest rank's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from grouprl.distributed import LOCAL, Comm
from grouprl.losses.objective import make_objective
from grouprl.multiagent import (
    Episode,
    TeamAdvantages,
    invalid_rates,
    mini_batch_sizes,
    row_rewards,
    team_advantages,
)
from grouprl.multiagent.parsers import read_verdict
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.estimate import run_settings
from grouprl.train.learner import batched_logprobs, update_policy
from grouprl.train.team_config import Team
from grouprl.train.team_models import Policies, TeamOptimizer
from grouprl.train.team_rollout import TokenRecord, group_rollout, records_for

__all__ = ["team_objectives", "advantages_of", "update_groups", "team_metrics",
           "reduce_team_metrics"]

UPDATE_METRICS = {"actor/pg_loss": "loss", "actor/grad_norm": "grad_norm",
                  "actor/clipfrac": "clip_fraction", "actor/entropy": "entropy",
                  "actor/updates": "optimizer_steps", "actor/lr": "lr",
                  "train/skipped_updates": "skipped_updates"}


def team_objectives(cfg: TrainConfig, team: Team) -> dict[str, Any]:
    """``{group: objective}``; ``ConfigError`` naming the agent's ``clip_ratio`` or
    ``algorithm.loss_options`` when the loss refuses its options."""
    a = cfg.algorithm
    out = {}
    for g in team.groups.groups:
        options = dict(a.loss_options)
        clip = g.settings.get("clip_ratio")
        if clip is not None:
            options.update(clip_low=clip, clip_high=clip)
        try:
            out[g.name] = make_objective(a.loss, options, a.loss_agg, run_settings(cfg))
        except ValueError as err:
            key = (f"multiagent.agents.{g.agents[0]}.clip_ratio" if clip is not None
                   else "algorithm.loss_options")
            raise ConfigError(f"{key}: {err}") from None
    return out


def advantages_of(team: Team, rows: Sequence[Any], episodes: Sequence[Episode],
                  iteration: int, comm: Comm = LOCAL) -> TeamAdvantages:
    """:func:`grouprl.multiagent.team_advantages` on the combined batch; the reference
    padding's seed moves with the iteration. Data parallel with reference padding: on every
    rank's rows, this rank's task groups kept (module docstring)."""
    options = dataclasses.replace(team.advantage,
                                  pad_seed=team.advantage.pad_seed * 1_000 + iteration)
    if not (comm.distributed and options.compat == "reference" and options.pad_divisor > 1):
        return team_advantages(rows, episodes, options)
    parts = comm.gather((list(rows), list(episodes)))
    res = team_advantages([r for p in parts for r in p[0]], [e for p in parts for e in p[1]],
                          options)
    own = {e.group_id for e in episodes}
    keep = [i for i, r in enumerate(res.rows) if r.group_id in own]   # originals first
    return TeamAdvantages([res.rows[i] for i in keep], res.advantages[keep])


def update_groups(cfg: TrainConfig, team: Team, policies: Policies, optimizer: TeamOptimizer,
                  objectives: dict[str, Any], res: TeamAdvantages, originals: Sequence[Any],
                  records: Sequence[TokenRecord], episodes: Sequence[Episode],
                  generator: torch.Generator, comm: Comm = LOCAL
                  ) -> dict[str, dict[str, float]]:
    """Each model group's update (module docstring); ``{group: update_policy metrics}``."""
    a, ma = cfg.algorithm, cfg.multiagent
    recs = records_for(res.rows, originals, records)
    index_of = {g.name: [i for i, r in enumerate(res.rows) if r.model_group == g.name]
                for g in team.groups.groups}
    counts = [len(v) for v in index_of.values()]
    if comm.distributed:              # global row counts: every rank takes the same steps
        counts = [int(c) for c in comm.sum(torch.tensor(counts, dtype=torch.long))]
    out: dict[str, dict[str, float]] = {}
    for g, total in zip(team.groups.groups, counts, strict=True):
        index = index_of[g.name]
        steps = len(mini_batch_sizes(total, ma.update_num, compat=ma.compat))
        if not total:
            out[g.name] = {"actor/updates": 0.0}
            continue
        model, tok = policies[g.name]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        rows = group_rollout(res.rows, recs, episodes, res.advantages, index, pad)
        s = g.settings
        if steps > 1 or a.ppo_epochs > 1:
            rows.old_logp = batched_logprobs(model, rows, temperature=s["temperature"] or 1.0,
                                             micro_batch_size=s["micro_batch_size"])
        out[g.name] = update_policy(
            model, optimizer[g.name], rows, objectives[g.name], loss_agg=a.loss_agg,
            entropy_coef=a.entropy_coef, ppo_epochs=a.ppo_epochs, num_mini_batches=steps,
            micro_batch_size=s["micro_batch_size"], grad_clip=s["grad_clip"],
            temperature=s["temperature"] or 1.0, generator=generator, comm=comm)
    return out


def _verdict_rate(team: Team, rows: Sequence[Any]) -> dict[str, float]:
    info = team.info
    default = getattr(team.orchestra, "unparsed_verdict", info.positive)
    verdicts = [read_verdict(r.response, "verify", info.choices) or default
                for r in rows if r.agent == "Verifier"]
    if not verdicts:
        return {}
    return {info.verdict_metric: sum(v == info.positive for v in verdicts) / len(verdicts)}


def team_metrics(team: Team, rows: Sequence[Any], episodes: Sequence[Episode],
                 res: TeamAdvantages, updates: dict[str, dict[str, float]]
                 ) -> dict[str, float]:
    """The iteration's metrics (module docstring)."""
    rewards = row_rewards(rows, episodes, team.advantage.invalid_penalty)
    rates = invalid_rates(rows)
    out: dict[str, float] = {
        "episode/reward": sum(e.reward for e in episodes) / max(len(episodes), 1),
        "episode/length": sum(e.length for e in episodes) / max(len(episodes), 1),
        "train/success_rate": sum(e.won for e in episodes) / max(len(episodes), 1),
        "train/rows": float(len(rows)),
        "train/duplicate_rows": float(len(res.rows) - len(rows))}
    out.update(_verdict_rate(team, rows))
    for agent in team.agents:
        name = agent.name
        mine = [i for i, r in enumerate(rows) if r.agent == name]
        adv = [float(res.advantages[i].abs()) for i, r in enumerate(res.rows) if r.agent == name]
        prefix = f"agent/{name}/"
        out[prefix + "rows"] = float(len(mine))
        if mine:
            out[prefix + "invalid_rate"] = rates[name]
            out[prefix + "reward_mean"] = sum(rewards[i] for i in mine) / len(mine)
            out[prefix + "adv_abs_mean"] = sum(adv) / len(adv)
        upd = updates.get(team.groups.group_of[name], {})
        out.update({prefix + short: float(upd[key]) for key, short in UPDATE_METRICS.items()
                    if key in upd})
    return out


def metric_weights(team: Team, rows: Sequence[Any], episodes: Sequence[Episode],
                   res: TeamAdvantages) -> dict[str, float]:
    """How many items each per-rank mean of :func:`team_metrics` averages (its weight when
    ranks are reduced): episodes, Verifier verdicts, an agent's rows (with duplicates for
    ``adv_abs_mean``)."""
    out = dict.fromkeys(("episode/reward", "episode/length", "train/success_rate"),
                        float(len(episodes)))
    out[team.info.verdict_metric] = float(sum(r.agent == "Verifier" for r in rows))
    for agent in team.agents:
        prefix = f"agent/{agent.name}/"
        mine = float(sum(r.agent == agent.name for r in rows))
        out[prefix + "invalid_rate"] = out[prefix + "reward_mean"] = mine
        out[prefix + "adv_abs_mean"] = float(sum(r.agent == agent.name for r in res.rows))
    return out


def _summed(key: str) -> bool:
    return key in ("train/rows", "train/duplicate_rows") or \
        (key.startswith("agent/") and key.endswith("/rows"))


def _global(key: str) -> bool:
    return key.startswith("agent/") and key.rsplit("/", 1)[-1] in UPDATE_METRICS.values()


def reduce_team_metrics(values: dict[str, float], weights: dict[str, float], comm: Comm
                        ) -> dict[str, float]:
    """One record from every rank's :func:`team_metrics` (+ timings): counts summed, means
    weighted by :func:`metric_weights`, the update's (global) metrics rank 0's, ``timing/*``
    the slowest rank's, anything else the mean over the ranks reporting it. Every rank calls;
    the identity in one process."""
    if not comm.distributed:
        return dict(values)
    parts = comm.gather((dict(values), dict(weights)))
    out = {}
    for key in dict.fromkeys(k for v, _ in parts for k in v):
        got = [(v[key], w.get(key, 1.0)) for v, w in parts if key in v]
        vals = [float(x) for x, _ in got]
        if _summed(key):
            out[key] = sum(vals)
        elif _global(key):
            out[key] = vals[0]
        elif key.startswith("timing/"):
            out[key] = max(vals)
        else:
            total = sum(w for _, w in got)
            out[key] = sum(x * w for x, w in got) / total if total else sum(vals) / len(vals)
    return out
