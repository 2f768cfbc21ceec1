"""Multi-turn rollout: groups of episodes → a step-wise :class:`RolloutBatch` + token tensors.

This is verl-agent's ``rollout_loop`` (spec-agentic-credit §1.1) without Ray: ``G`` tasks are each
reset ``n`` times to the same initial state (one group per task); at every step the prompt of each
live environment is rebuilt from its current observation plus the last ``history_length``
(observation, action) records (§1.2), one response per environment is sampled, the action is
parsed, and every environment steps. Each agent step becomes one training row.

Rows are returned environment-major and time-ascending, with explicit ``step`` indices. Rows after
``done`` are never produced (verl's ``active_masks``). A trajectory whose environment crashed or
timed out is dropped entirely and counted in ``env/failed_trajectories``.

Row columns (see :class:`grouprl.batch.RolloutBatch`): ``group_id`` (task index + offset),
``traj_id`` (global episode index), ``step``, ``reward`` (the env reward of that step), ``state``
and ``next_state`` (exact ids of the anchors before/after the step, one shared id space),
``invalid`` (the reply had no parsable action, the generation was truncated, or the env rejected
the action), ``success`` (the episode was won — the env's ``won`` flag, not ``return > 0``, which
differs under Sokoban's shaped rewards; spec §4.4 / open question 7).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from grouprl.agent.memory import HistoryMemory
from grouprl.agent.parser import parse_action
from grouprl.agent.prompts import PromptTemplate, apply_chat_template, render_from_memory
from grouprl.batch import RolloutBatch, state_ids

__all__ = ["Rollout", "collect_rollouts", "render_prompt"]


@dataclass
class Rollout:
    """The rows of one rollout phase and their token tensors (row i of each tensor = row i)."""

    batch: RolloutBatch
    prompt_ids: torch.Tensor       # (N, P) left-padded
    prompt_mask: torch.Tensor      # (N, P)
    response_ids: torch.Tensor     # (N, R) right-padded
    response_mask: torch.Tensor    # (N, R)
    logprobs: torch.Tensor         # (N, R) sampling log-probs (0 on padding)
    episode_return: torch.Tensor   # (E,) per kept episode
    episode_length: torch.Tensor   # (E,)
    episode_won: torch.Tensor      # (E,) bool
    episode_group: torch.Tensor    # (E,) group id of each kept episode
    responses: list[str] = field(default_factory=list)  # decoded reply of each row
    metrics: dict[str, float] = field(default_factory=dict)
    truncated: torch.Tensor | None = None  # (N,) bool: the generation hit max_new_tokens
    extras: list[dict | None] = field(default_factory=list)  # env step info["extra"] per row

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])


def render_prompt(template: PromptTemplate, memory: HistoryMemory, env_index: int, *,
                  task: str, observation: str, admissible: Sequence[str] | None,
                  tokenizer: Any = None, use_chat_template: bool = True) -> str:
    """The prompt of one environment at its current step (§1.2 rendering), chat-templated when
    the tokenizer has a chat template."""
    text = render_from_memory(template, memory, env_index, task=task, observation=observation,
                              admissible_actions=admissible)
    if use_chat_template and tokenizer is not None:
        return apply_chat_template(tokenizer, text, template.system)
    return text


class _RawAction:
    """A reply passed to the env as is (``raw_action``): always valid, the text is the action."""

    __slots__ = ("action",)
    valid = True

    def __init__(self, text: str) -> None:
        self.action = text


def _pad_cat(parts: list[torch.Tensor], width: int, value: float, left: bool) -> torch.Tensor:
    padded = [F.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]), value=value)
              for p in parts]
    return torch.cat(padded, 0) if padded else torch.zeros(0, width)


def collect_rollouts(pool: Any, generate_fn: Callable[[list[str]], Any], *,
                     template: PromptTemplate, task_seeds: Sequence[int], group_size: int,
                     max_steps: int, history_length: int = 2, action_tag: str | None = "action",
                     allow_plain: bool = False, tokenizer: Any = None,
                     use_chat_template: bool = True, pad_token_id: int = 0,
                     group_offset: int = 0, traj_offset: int = 0,
                     vocabulary: dict[Hashable, int] | None = None,
                     raw_action: bool = False) -> Rollout:
    """Roll out ``len(task_seeds)`` groups of ``group_size`` episodes on ``pool``.

    Args:
        pool: an :class:`grouprl.envs.EnvPool` with ``num_envs == len(task_seeds) * group_size``.
        generate_fn: prompts → :class:`grouprl.policy.Generation` (texts, token ids, log-probs,
            ``truncated``).
        template: the prompt template; ``history_length`` the memory window k.
        max_steps: step budget of the loop (the pool may truncate earlier).
        group_offset, traj_offset: added to group/trajectory ids (distinct ids across the
            repeated rollouts of dynamic sampling).
        vocabulary: anchor → state id table shared across calls (exact ids, spec §1.2).
        raw_action: give the env the whole reply, unparsed (single-turn reasoning: the verifier
            extracts the answer itself); truncated replies are still passed as "".
    """
    num_envs = len(task_seeds) * group_size
    if pool.num_envs != num_envs:
        raise ValueError(f"pool: has {pool.num_envs} envs but {len(task_seeds)} tasks × "
                         f"group_size {group_size} = {num_envs} are needed")
    resets = pool.reset_groups(list(task_seeds), group_size)
    memory = HistoryMemory(num_envs, history_length)
    observation = [r.observation for r in resets]
    anchor: list[Hashable] = [r.anchor for r in resets]
    admissible = [r.admissible_actions for r in resets]
    task = [r.task for r in resets]
    done = [False] * num_envs
    failed = [False] * num_envs
    won = [False] * num_envs

    rec_env: list[int] = []
    rec_step: list[int] = []
    rec_reward: list[float] = []
    rec_state: list[Hashable] = []
    rec_next: list[Hashable] = []
    rec_invalid: list[bool] = []
    rec_text: list[str] = []
    rec_truncated: list[bool] = []
    rec_extra: list[dict | None] = []
    prompt_parts: list[torch.Tensor] = []
    prompt_mask_parts: list[torch.Tensor] = []
    resp_parts: list[torch.Tensor] = []
    resp_mask_parts: list[torch.Tensor] = []
    logp_parts: list[torch.Tensor] = []
    truncated_generations = 0

    for t in range(max_steps):
        active = [i for i in range(num_envs) if not done[i]]
        if not active:
            break
        prompts = [render_prompt(template, memory, i, task=task[i], observation=observation[i],
                                 admissible=admissible[i], tokenizer=tokenizer,
                                 use_chat_template=use_chat_template)
                   for i in active]
        gen = generate_fn(prompts)
        parsed = [_RawAction(text) if raw_action else
                  parse_action(text, tag=action_tag, allow_plain=allow_plain)
                  for text in gen.texts]
        truncated = gen.truncated.cpu().tolist()
        truncated_generations += sum(truncated)
        actions: list[str | None] = [None] * num_envs
        for j, i in enumerate(active):
            actions[i] = "" if truncated[j] else parsed[j].action
        results = pool.step(actions)
        stored_obs: list[str | None] = [None] * num_envs
        for j, i in enumerate(active):
            res = results[i]
            stored_obs[i] = observation[i]
            rec_env.append(i)
            rec_step.append(t)
            rec_state.append(anchor[i])
            rec_text.append(gen.texts[j])
            rec_truncated.append(bool(truncated[j]))
            rec_extra.append(None if res.failed else res.extra)
            rec_invalid.append(bool(truncated[j] or not parsed[j].valid or not res.valid))
            if res.failed:
                failed[i] = done[i] = True
                rec_reward.append(0.0)
                rec_next.append(anchor[i])
                continue
            rec_reward.append(float(res.reward))
            rec_next.append(res.anchor)
            won[i] = won[i] or bool(res.won)
            done[i] = bool(res.done)
            observation[i], anchor[i], admissible[i] = res.observation, res.anchor, \
                res.admissible_actions
        memory.store(stored_obs, [actions[i] if stored_obs[i] is not None else None
                                  for i in range(num_envs)])
        prompt_parts.append(gen.prompt_ids.cpu())  # rows are assembled on the CPU
        prompt_mask_parts.append(gen.prompt_mask.cpu())
        resp_parts.append(gen.response_ids.cpu())
        resp_mask_parts.append(gen.response_mask.cpu())
        logp_parts.append(gen.logprobs.float().cpu())

    # ---- assemble: keep rows of non-failed episodes, env-major and time-ascending
    env_t = torch.tensor(rec_env, dtype=torch.int64)
    step_t = torch.tensor(rec_step, dtype=torch.int64)
    failed_t = torch.tensor(failed, dtype=torch.bool)
    keep = ~failed_t[env_t] if len(rec_env) else torch.zeros(0, dtype=torch.bool)
    order = torch.argsort(env_t * (max_steps + 1) + step_t, stable=True)
    order = order[keep[order]]

    p_width = max((p.shape[1] for p in prompt_parts), default=0)
    r_width = max((p.shape[1] for p in resp_parts), default=0)
    prompt_ids = _pad_cat(prompt_parts, p_width, pad_token_id, left=True)[order]
    prompt_mask = _pad_cat(prompt_mask_parts, p_width, 0, left=True)[order]
    response_ids = _pad_cat(resp_parts, r_width, pad_token_id, left=False)[order]
    response_mask = _pad_cat(resp_mask_parts, r_width, 0, left=False)[order]
    logprobs = _pad_cat(logp_parts, r_width, 0.0, left=False)[order]

    idx = order.tolist()
    vocab = {} if vocabulary is None else vocabulary
    envs_kept = env_t[order]
    reward = torch.tensor(rec_reward, dtype=torch.float32)[order]
    batch = RolloutBatch(
        group_id=envs_kept // group_size + group_offset,
        traj_id=envs_kept + traj_offset,
        step=step_t[order],
        reward=reward,
        state=state_ids([rec_state[k] for k in idx], vocab),
        next_state=state_ids([rec_next[k] for k in idx], vocab),
        success=torch.tensor(won, dtype=torch.bool)[envs_kept],
        invalid=torch.tensor(rec_invalid, dtype=torch.bool)[order],
    )

    kept_envs = [i for i in range(num_envs) if not failed[i]]
    kept_t = torch.tensor(kept_envs, dtype=torch.int64)
    ep_return = torch.zeros(num_envs, dtype=torch.float64).index_add_(
        0, envs_kept, reward.double())[kept_t].float()
    ep_length = torch.bincount(envs_kept, minlength=num_envs)[kept_t]
    ep_won = torch.tensor(won, dtype=torch.bool)[kept_t]
    metrics = {"truncated_generations": float(truncated_generations),
               "failed_trajectories": float(sum(failed))}
    metrics.update(_episode_metrics(ep_return, ep_length, ep_won,
                                    torch.as_tensor(batch.invalid)))
    return Rollout(batch=batch, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   response_ids=response_ids, response_mask=response_mask, logprobs=logprobs,
                   episode_return=ep_return, episode_length=ep_length, episode_won=ep_won,
                   episode_group=kept_t // group_size + group_offset,
                   responses=[rec_text[k] for k in idx], metrics=metrics,
                   truncated=torch.tensor(rec_truncated, dtype=torch.bool)[order],
                   extras=[rec_extra[k] for k in idx])


def _episode_metrics(ret: torch.Tensor, length: torch.Tensor, won: torch.Tensor,
                     invalid: torch.Tensor) -> dict[str, float]:
    e = ret.numel()
    return {"success_rate": float(won.float().mean()) if e else 0.0,
            "episode_return": float(ret.float().mean()) if e else 0.0,
            "episode_length": float(length.float().mean()) if e else 0.0,
            "invalid_rate": float(invalid.float().mean()) if invalid.numel() else 0.0,
            "rows": float(invalid.numel())}


def concat_rollouts(parts: Sequence[Rollout], pad_token_id: int = 0) -> Rollout:
    """One rollout from several (dynamic sampling keeps groups from repeated tries)."""
    if not parts:
        raise ValueError("concat_rollouts: no rollouts to concatenate")
    p_width = max(r.prompt_ids.shape[1] for r in parts)
    r_width = max(r.response_ids.shape[1] for r in parts)

    def cols(name: str) -> torch.Tensor:
        return torch.cat([torch.as_tensor(getattr(r.batch, name)) for r in parts])

    batch = RolloutBatch(group_id=cols("group_id"), traj_id=cols("traj_id"), step=cols("step"),
                         reward=cols("reward"), state=cols("state"),
                         next_state=cols("next_state"), success=cols("success"),
                         invalid=cols("invalid"))
    metrics = {k: sum(r.metrics[k] for r in parts) for k in
               ("truncated_generations", "failed_trajectories")}
    won = torch.cat([r.episode_won for r in parts])
    ret = torch.cat([r.episode_return for r in parts])
    length = torch.cat([r.episode_length for r in parts])
    metrics.update(_episode_metrics(ret, length, won, torch.as_tensor(batch.invalid)))
    return Rollout(
        batch=batch,
        prompt_ids=_pad_cat([r.prompt_ids for r in parts], p_width, pad_token_id, True),
        prompt_mask=_pad_cat([r.prompt_mask for r in parts], p_width, 0, True),
        response_ids=_pad_cat([r.response_ids for r in parts], r_width, pad_token_id, False),
        response_mask=_pad_cat([r.response_mask for r in parts], r_width, 0, False),
        logprobs=_pad_cat([r.logprobs for r in parts], r_width, 0.0, False),
        episode_return=ret, episode_length=length, episode_won=won,
        episode_group=torch.cat([r.episode_group for r in parts]),
        responses=[s for r in parts for s in r.responses], metrics=metrics,
        truncated=torch.cat([_truncated(r) for r in parts]),
        extras=[e for r in parts for e in _extras(r)])


def _truncated(r: Rollout) -> torch.Tensor:
    return r.truncated if r.truncated is not None else torch.zeros(len(r), dtype=torch.bool)


def _extras(r: Rollout) -> list[dict | None]:
    return r.extras if len(r.extras) == len(r) else [None] * len(r)


def select_groups(rollout: Rollout, groups: torch.Tensor, pad_token_id: int = 0) -> Rollout:
    """The rows and episodes of the given group ids only (dynamic sampling)."""
    gid = torch.as_tensor(rollout.batch.group_id)
    rows = torch.isin(gid, groups)
    eps = torch.isin(rollout.episode_group, groups)
    b = rollout.batch

    def col(x: Any) -> torch.Tensor:
        return torch.as_tensor(x)[rows]

    batch = RolloutBatch(group_id=col(b.group_id), traj_id=col(b.traj_id), step=col(b.step),
                         reward=col(b.reward), state=col(b.state), next_state=col(b.next_state),
                         success=col(b.success), invalid=col(b.invalid))
    idx = torch.nonzero(rows).flatten().tolist()
    out = Rollout(batch=batch, prompt_ids=rollout.prompt_ids[rows],
                  prompt_mask=rollout.prompt_mask[rows], response_ids=rollout.response_ids[rows],
                  response_mask=rollout.response_mask[rows], logprobs=rollout.logprobs[rows],
                  episode_return=rollout.episode_return[eps],
                  episode_length=rollout.episode_length[eps],
                  episode_won=rollout.episode_won[eps], episode_group=rollout.episode_group[eps],
                  responses=[rollout.responses[k] for k in idx], metrics=dict(rollout.metrics),
                  truncated=_truncated(rollout)[rows],
                  extras=[_extras(rollout)[k] for k in idx])
    out.metrics.update(_episode_metrics(out.episode_return, out.episode_length, out.episode_won,
                                        torch.as_tensor(batch.invalid)))
    return out
