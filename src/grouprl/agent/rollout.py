"""Multi-turn rollout: groups of episodes → a step-wise :class:`RolloutBatch` + token tensors.

This is verl-agent's ``rollout_loop`` (spec-agentic-credit §1.1) without Ray: ``G`` tasks are each
reset ``n`` times to the same initial state (one group per task); at every step the prompt of each
live environment is rebuilt from its current observation plus the last ``history_length``
(observation, action) records (§1.2), one response per environment is sampled, the action is
parsed, and every environment steps. Each agent step becomes one training row.

Rows are returned environment-major and time-ascending, with explicit ``step`` indices. Rows after
``done`` are never produced (verl's ``active_masks``). A trajectory whose environment crashed,
timed out or could not be reset (after the pool's retries) is dropped entirely and counted in
``failed_trajectories``; one whose env returned a
non-finite reward (NaN, ±inf) is ended there, dropped the same way and counted in
``nonfinite_reward_trajectories`` — it never reaches an estimator.

Row columns (see :class:`grouprl.batch.RolloutBatch`): ``group_id`` (task index + offset),
``traj_id`` (global episode index), ``step``, ``reward`` (the env reward of that step), ``state``
and ``next_state`` (exact ids of the anchors before/after the step, one shared id space),
``invalid`` (the reply had no parsable action, the generation was truncated, or the env rejected
the action), ``success`` (the episode was won — the env's ``won`` flag, not ``return > 0``, which
differs under Sokoban's shaped rewards; spec §4.4 / open question 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import torch

from grouprl.agent.memory import HistoryMemory
from grouprl.agent.parser import parse_action
from grouprl.agent.prompts import PromptTemplate, apply_chat_template, render_from_memory
from grouprl.batch import (
    Rollout,
    RolloutBatch,
    concat_rollouts,
    episode_metrics,
    pad_concat,
    select_groups,
    state_ids,
)

__all__ = ["Rollout", "collect_rollouts", "render_prompt", "concat_rollouts", "select_groups",
           "StepRouting"]


class StepRouting(Protocol):
    """A policy that picks per environment step how each row is computed (PA-MoE's phase
    router, :mod:`grouprl.train.pamoe`). :func:`collect_rollouts` calls :meth:`start` once
    with every env's goal (task text), then :meth:`generate` at every step for the live envs;
    :meth:`columns` returns per-row tensors (``expert``, ...) of every generated row in call
    order, which become :class:`Rollout` fields."""

    def start(self, goals: list[str]) -> None: ...

    def generate(self, generate_fn: Callable[[list[str]], Any], prompts: list[str],
                 envs: list[int], observations: list[str]) -> Any: ...

    def columns(self) -> dict[str, torch.Tensor]: ...


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


def collect_rollouts(pool: Any, generate_fn: Callable[[list[str]], Any], *,
                     template: PromptTemplate, task_seeds: Sequence[int], group_size: int,
                     max_steps: int, history_length: int = 2, action_tag: str | None = "action",
                     allow_plain: bool = False, tokenizer: Any = None,
                     use_chat_template: bool = True, pad_token_id: int = 0,
                     group_offset: int = 0, traj_offset: int = 0,
                     vocabulary: dict[Hashable, int] | None = None,
                     raw_action: bool = False, routing: StepRouting | None = None) -> Rollout:
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
        routing: a :class:`StepRouting` that generates each step (default: ``generate_fn``
            directly); its per-row columns are stored on the rollout.
    """
    num_envs = len(task_seeds) * group_size
    if pool.num_envs != num_envs:
        raise ValueError(f"pool: has {pool.num_envs} envs but {len(task_seeds)} tasks × "
                         f"group_size {group_size} = {num_envs} are needed")
    resets = pool.reset_groups(list(task_seeds), group_size, allow_failed=True)
    memory = HistoryMemory(num_envs, history_length)
    observation = [r.observation for r in resets]
    anchor: list[Hashable] = [r.anchor for r in resets]
    admissible = [r.admissible_actions for r in resets]
    task = [r.task for r in resets]
    category = [r.category for r in resets]
    if routing is not None:
        routing.start(task)
    failed = [r.failed for r in resets]     # a reset that kept failing: the episode is dropped
    done = list(failed)
    won = [False] * num_envs
    nonfinite = [False] * num_envs

    rec_env: list[int] = []
    rec_step: list[int] = []
    rec_reward: list[float] = []
    rec_state: list[Hashable] = []
    rec_next: list[Hashable] = []
    rec_invalid: list[bool] = []
    rec_text: list[str] = []
    rec_obs: list[str] = []
    rec_truncated: list[bool] = []
    rec_extra: list[dict | None] = []
    prompt_parts: list[torch.Tensor] = []
    prompt_mask_parts: list[torch.Tensor] = []
    resp_parts: list[torch.Tensor] = []
    resp_mask_parts: list[torch.Tensor] = []
    logp_parts: list[torch.Tensor] = []
    truncated_generations = 0
    truncated_prompts = 0

    for t in range(max_steps):
        active = [i for i in range(num_envs) if not done[i]]
        if not active:
            break
        prompts = [render_prompt(template, memory, i, task=task[i], observation=observation[i],
                                 admissible=admissible[i], tokenizer=tokenizer,
                                 use_chat_template=use_chat_template)
                   for i in active]
        gen = generate_fn(prompts) if routing is None else \
            routing.generate(generate_fn, prompts, active, [observation[i] for i in active])
        cut = getattr(gen, "prompt_truncated", None)
        truncated_prompts += int(cut.sum()) if cut is not None else 0
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
            rec_obs.append(observation[i])
            rec_truncated.append(bool(truncated[j]))
            rec_extra.append(None if res.failed else res.extra)
            rec_invalid.append(bool(truncated[j] or not parsed[j].valid or not res.valid))
            if not res.failed and not math.isfinite(float(res.reward)):
                nonfinite[i] = True
            if res.failed or nonfinite[i]:
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
    prompt_ids = pad_concat(prompt_parts, p_width, pad_token_id, left=True)[order]
    prompt_mask = pad_concat(prompt_mask_parts, p_width, 0, left=True)[order]
    response_ids = pad_concat(resp_parts, r_width, pad_token_id, left=False)[order]
    response_mask = pad_concat(resp_mask_parts, r_width, 0, left=False)[order]
    logprobs = pad_concat(logp_parts, r_width, 0.0, left=False)[order]

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
               "truncated_prompts": float(truncated_prompts),
               "failed_trajectories": float(sum(failed) - sum(nonfinite)),
               "nonfinite_reward_trajectories": float(sum(nonfinite))}
    metrics.update(episode_metrics(ep_return, ep_length, ep_won,
                                    torch.as_tensor(batch.invalid)))
    return Rollout(batch=batch, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   response_ids=response_ids, response_mask=response_mask, logprobs=logprobs,
                   episode_return=ep_return, episode_length=ep_length, episode_won=ep_won,
                   episode_group=kept_t // group_size + group_offset,
                   responses=[rec_text[k] for k in idx], metrics=metrics,
                   truncated=torch.tensor(rec_truncated, dtype=torch.bool)[order],
                   extras=[rec_extra[k] for k in idx],
                   observations=[rec_obs[k] for k in idx],
                   category=[category[i] for i in envs_kept.tolist()],
                   **({k: v[order] for k, v in routing.columns().items()}
                      if routing is not None else {}))
