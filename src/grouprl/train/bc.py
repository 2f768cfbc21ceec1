"""Behaviour cloning warm start on expert trajectories.

A randomly initialised (or small pretrained) model almost never stumbles on a reward in a text
game, so group-relative advantages are all zero and RL cannot start. grouprl therefore warm-starts
with supervised fine-tuning on expert episodes: the environment's own solver or gold path
(``env.expert_actions()`` — Sokoban's BFS solver — or ``env.gold_actions()`` — TextWorldExpress
and ScienceWorld), rendered with exactly the prompts the agent sees at RL time (same template,
same memory window), the reply being ``<action>a</action>``. The loss is the token-mean negative
log-likelihood of the reply tokens.

Expert episodes run through an :class:`~grouprl.envs.EnvPool` with the run's ``env.backend`` and
``env.step_timeout``, like training rollouts: the plan is computed where the env lives (its
worker process with ``backend=process``), and an episode whose env raises, crashes or hangs past
the deadline (thread and process backends) is dropped and counted
(:attr:`ExpertSamples.failed_episodes`); the env is replaced and the other episodes go on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grouprl.agent.memory import HistoryMemory
from grouprl.agent.prompts import PromptTemplate
from grouprl.agent.rollout import render_prompt
from grouprl.envs import EnvPool
from grouprl.policy import left_pad, response_logprobs

__all__ = ["ExpertSample", "ExpertSamples", "expert_samples", "format_action", "clone_behaviour",
           "tokenize_pairs"]

MAX_ERRORS_KEPT = 5


@dataclass(frozen=True)
class ExpertSample:
    prompt: str
    response: str


def format_action(action: str, tag: str | None) -> str:
    """The reply that carries ``action`` (``<tag>action</tag>``, or the bare action)."""
    return action if tag is None else f"<{tag}>{action}</{tag}>"


class ExpertSamples(list):
    """The :class:`ExpertSample` list of :func:`expert_samples`, in seed order, with
    ``failed_episodes`` (episodes dropped because their env raised, crashed or hung) and
    ``errors`` (the first few failures' messages)."""

    def __init__(self, samples: Sequence[ExpertSample] = (), failed_episodes: int = 0,
                 errors: Sequence[str] = ()) -> None:
        super().__init__(samples)
        self.failed_episodes = failed_episodes
        self.errors = list(errors)


def _pool_size(backend: str, episodes: int, num_workers: int | None) -> int:
    """Envs that run expert episodes side by side: one in-process (``serial``), else up to
    ``num_workers`` (default: the CPU count)."""
    if backend == "serial":
        return 1
    return max(1, min(episodes, num_workers or os.cpu_count() or 1))


def expert_samples(env_name: str, env_kwargs: dict, seeds: Sequence[int], *,
                   template: PromptTemplate, history_length: int, max_steps: int,
                   action_tag: str | None = "action", tokenizer: Any = None,
                   use_chat_template: bool = True, backend: str = "serial",
                   step_timeout: float | None = 30.0,
                   num_workers: int | None = None) -> ExpertSamples:
    """(prompt, reply) pairs of the expert's episodes on ``seeds`` (at most ``max_steps`` each),
    in seed order, run through an :class:`~grouprl.envs.EnvPool` (module docstring).

    ``backend``, ``step_timeout``: the pool's (``env.backend``, ``env.step_timeout``);
    ``num_workers``: envs run side by side with the thread and process backends (default: the
    CPU count).  Healthy envs give the same samples on every backend.  An episode whose env
    fails (reset retries spent, plan, or a step) is left out and counted in the result's
    ``failed_episodes``.  ``RuntimeError`` when every episode failed (naming the first error);
    ``TypeError`` when the env has no ``expert_actions()`` / ``gold_actions()``.
    """
    seeds = [int(s) for s in seeds]
    n = _pool_size(backend, len(seeds), num_workers)
    out = ExpertSamples()
    if not seeds:
        return out
    with EnvPool(env_name, env_kwargs, n, backend=backend, step_timeout=step_timeout,
                 num_workers=num_workers if backend == "thread" else None) as pool:
        for start in range(0, len(seeds), n):
            chunk = seeds[start:start + n]
            # a short last chunk: the spare envs are reset to a chunk seed and left idle
            episodes = _expert_episodes(pool, chunk + chunk[:1] * (n - len(chunk)), len(chunk),
                                        template=template, history_length=history_length,
                                        max_steps=max_steps, action_tag=action_tag,
                                        tokenizer=tokenizer,
                                        use_chat_template=use_chat_template)
            for samples in episodes:
                if isinstance(samples, str):
                    out.failed_episodes += 1
                    if len(out.errors) < MAX_ERRORS_KEPT:
                        out.errors.append(samples)
                else:
                    out.extend(samples)
    if not out and out.failed_episodes:
        raise RuntimeError(f"expert episodes: all {out.failed_episodes} failed; first error: "
                           f"{out.errors[0]}")
    return out


def _expert_episodes(pool: EnvPool, seeds: list[int], used: int, *, template: PromptTemplate,
                     history_length: int, max_steps: int, action_tag: str | None,
                     tokenizer: Any, use_chat_template: bool) -> list[list[ExpertSample] | str]:
    """The samples of the episodes of the first ``used`` envs, reset with ``seeds``: a list of
    samples per episode, or the error text of a failed one."""
    resets = pool.reset(seeds, allow_failed=True)
    result: list[list[ExpertSample] | str] = [[] for _ in range(used)]
    for i in range(used):
        if resets[i].failed:
            result[i] = f"seed {seeds[i]}: {resets[i].error}"
    plans = pool.expert_plans([i for i in range(used) if not resets[i].failed])
    for i in range(used):
        if not isinstance(result[i], str) and plans[i] is None:
            result[i] = (f"seed {seeds[i]}: the expert plan failed (env restarted): "
                         f"{pool.errors.get(i, 'no error text')}")
    live = [i for i in range(used) if not isinstance(result[i], str)]
    memory = {i: HistoryMemory(1, history_length) for i in live}
    obs = {i: resets[i].observation for i in live}
    admissible = {i: resets[i].admissible_actions for i in live}
    for t in range(max_steps):
        actions: list[str | None] = [None] * pool.num_envs
        for i in live:
            plan = plans[i]
            assert plan is not None
            if t >= len(plan):
                continue
            actions[i] = plan[t]
            prompt = render_prompt(template, memory[i], 0, task=resets[i].task,
                                   observation=obs[i], admissible=admissible[i],
                                   tokenizer=tokenizer, use_chat_template=use_chat_template)
            samples = result[i]
            assert isinstance(samples, list)
            samples.append(ExpertSample(prompt, format_action(plan[t], action_tag)))
            memory[i].store([obs[i]], [plan[t]])
        if all(a is None for a in actions):
            break
        steps = pool.step(actions)
        for i in [i for i in live if actions[i] is not None]:
            res = steps[i]
            assert res is not None
            if res.failed:
                result[i] = f"seed {seeds[i]} step {t + 1}: {res.error}"
                live.remove(i)
            elif res.done:
                live.remove(i)
            else:
                obs[i], admissible[i] = res.observation, res.admissible_actions
    return result


def tokenize_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
    """Left-padded prompt ids and right-padded response ids (the layout generation produces)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_ids, prompt_mask = left_pad(tokenizer(list(prompts), add_special_tokens=False)
                                       ["input_ids"], pad)
    responses_ids = [torch.tensor(r, dtype=torch.long) for r in
                     tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
    response_ids = pad_sequence(responses_ids, batch_first=True, padding_value=pad)
    response_mask = pad_sequence([torch.ones_like(r) for r in responses_ids], batch_first=True)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "response_ids": response_ids, "response_mask": response_mask}


def clone_behaviour(model: torch.nn.Module, tokenizer: Any, samples: Sequence[ExpertSample], *,
                    epochs: int = 2, batch_size: int = 32, lr: float = 1e-3,
                    max_updates: int | None = None, seed: int = 0, grad_clip: float = 1.0,
                    on_update: Any = None) -> list[float]:
    """Fine-tune ``model`` on ``samples`` (token-mean NLL of the replies); the per-update losses.

    Uses its own AdamW (the RL optimizer starts fresh afterwards, as verl's actor does after SFT).
    """
    if not samples:
        raise ValueError("behaviour cloning: no expert samples (check bc.episodes and the env)")
    data = tokenize_pairs(tokenizer, [s.prompt for s in samples], [s.response for s in samples])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    n = len(samples)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if max_updates is not None and len(losses) >= max_updates:
                opt.zero_grad(set_to_none=True)
                return losses
            idx = perm[start:start + batch_size]
            pm = data["prompt_mask"][idx]
            p = int(pm.sum(1).max())
            rm = data["response_mask"][idx]
            r = int(rm.sum(1).max())
            width = pm.shape[1]
            dev = next(model.parameters()).device
            logp, _ = response_logprobs(model, data["prompt_ids"][idx, width - p:].to(dev),
                                        pm[:, width - p:].to(dev),
                                        data["response_ids"][idx, :r].to(dev), rm[:, :r].to(dev))
            mask = rm[:, :r].float().to(dev)
            loss = -(logp * mask).sum() / mask.sum()
            if not math.isfinite(float(loss.detach())):
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if on_update is not None:
                on_update(len(losses), float(loss))
    opt.zero_grad(set_to_none=True)          # no gradient outlives cloning (LoRA freezes later)
    return losses
