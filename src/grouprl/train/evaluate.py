"""Held-out evaluation: one episode per held-out task, success rate, return, length, invalid rate.

Held-out tasks are the env seeds ``eval.seed_offset + i`` for ``i < eval.episodes`` (training
draws its task seeds below ``seed_offset``, so they never overlap). Sampling uses its own
generator seeded from the run seed, so evaluating the same weights twice gives the same numbers
and evaluation never perturbs the training RNG (resume equivalence).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from grouprl.agent.prompts import PromptTemplate
from grouprl.agent.rollout import StepRouting, collect_rollouts
from grouprl.batch import Rollout
from grouprl.distributed import LOCAL, Comm, shard_bounds
from grouprl.distributed.fsdp import gathered
from grouprl.envs import EnvPool
from grouprl.policy import Generation
from grouprl.policy.backends import (
    GenerationBackend,
    HFBackend,
    make_backend,
    tokenize_prompts,
)
from grouprl.policy.precision import autocast, compute_dtype
from grouprl.train.config import TrainConfig
from grouprl.train.sampling import raw_action, single_turn
from grouprl.train.task_metrics import category_metrics

__all__ = ["make_generate_fn", "make_rollout_backend", "evaluate_policy", "evaluate_run",
           "eval_seeds", "response_length_metrics"]


def make_generate_fn(model: torch.nn.Module, tokenizer: Any, *, max_new_tokens: int,
                     temperature: float, top_p: float = 1.0, stop: tuple[str, ...] = (),
                     generator: torch.Generator | None = None, batch_size: int | None = None,
                     max_prompt_tokens: int | None = None,
                     backend: GenerationBackend | None = None
                     ) -> Callable[[list[str]], Generation]:
    """prompts → :class:`Generation` with the rollout settings (temperature 0 = greedy),
    through ``backend`` (default: :class:`HFBackend` on ``model`` with ``generator``,
    ``batch_size`` and ``max_prompt_tokens``). Prompts are tokenized here, as
    :func:`grouprl.policy.generate` does (no special tokens added): backends take token ids."""
    if backend is None:
        backend = HFBackend(model, tokenizer, generator=generator, batch_size=batch_size,
                            max_prompt_tokens=max_prompt_tokens)

    def fn(prompts: list[str]) -> Generation:
        return backend.generate(tokenize_prompts(tokenizer, prompts), n=1,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, stop_strings=tuple(stop))

    return fn


def make_rollout_backend(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any,
                         generator: torch.Generator | None) -> GenerationBackend:
    """The training rollouts' engine, ``rollout.generation_backend`` (``rollout.vllm``: its
    options; ``run_dir/rollout_engine``: its model directory). Evaluation keeps the HF loop."""
    ro = cfg.rollout
    return make_backend(ro.generation_backend, model, tokenizer, generator=generator,
                        batch_size=ro.generation_batch_size,
                        max_prompt_tokens=ro.max_prompt_tokens, seed=cfg.seed,
                        work_dir=Path(cfg.run_dir) / "rollout_engine",
                        vllm_options=vars(ro.vllm))


def eval_seeds(episodes: int, seed_offset: int) -> list[int]:
    return [seed_offset + i for i in range(episodes)]


def evaluate_policy(model: torch.nn.Module, tokenizer: Any, *, env_name: str, env_kwargs: dict,
                    template: PromptTemplate, episodes: int, seed_offset: int, max_steps: int,
                    history_length: int, temperature: float, max_new_tokens: int,
                    stop: tuple[str, ...], seed: int, action_tag: str | None = "action",
                    allow_plain: bool = False, use_chat_template: bool = True,
                    backend: str = "serial", step_timeout: float | None = 30.0,
                    num_workers: int | None = None, batch_size: int | None = None,
                    pool: EnvPool | None = None, raw_action: bool = False,
                    max_prompt_tokens: int | None = None, shard: tuple[int, int] | None = None,
                    routing: StepRouting | None = None) -> tuple[dict[str, float], Rollout]:
    """Metrics ``eval/*`` of the policy on the held-out tasks, and the rollout itself;
    ``shard = (lo, hi)``: only held-out tasks ``lo … hi−1`` (a data-parallel rank's share);
    ``routing``: a routed policy's step router (PA-MoE, greedy). Multi-task envs add
    ``eval/success_rate/<category>`` and friends (:mod:`grouprl.train.task_metrics`)."""
    device = next(model.parameters()).device
    lo, hi = shard if shard is not None else (0, episodes)
    seeds = eval_seeds(episodes, seed_offset)[lo:hi]
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 17 + lo)
    generate_fn = make_generate_fn(model, tokenizer, max_new_tokens=max_new_tokens,
                                   temperature=temperature, stop=stop, generator=gen,
                                   batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
    own = pool is None
    if own:
        pool = EnvPool(env_name, env_kwargs, len(seeds), backend=backend, max_steps=max_steps,
                       step_timeout=step_timeout, num_workers=num_workers)
    try:
        with torch.no_grad():
            rollout = collect_rollouts(
                pool, generate_fn, template=template,
                task_seeds=seeds, group_size=1, max_steps=max_steps,
                history_length=history_length, action_tag=action_tag, allow_plain=allow_plain,
                raw_action=raw_action,
                tokenizer=tokenizer, use_chat_template=use_chat_template,
                pad_token_id=tokenizer.pad_token_id or 0, routing=routing)
    finally:
        if own:
            pool.close()
    m = rollout.metrics
    metrics = {f"eval/{k}": m[k] for k in ("success_rate", "episode_return", "episode_length",
                                           "invalid_rate", "failed_trajectories",
                                           "nonfinite_reward_trajectories")}
    metrics.update(response_length_metrics(rollout, prefix="eval/"))
    metrics.update(category_metrics(rollout, "eval"))
    return metrics, rollout


def response_length_metrics(rollout: Rollout, prefix: str = "") -> dict[str, float]:
    """Mean and percentiles (50/90/99, nearest-rank via ``torch.quantile`` "higher") of the
    response token counts of every row, and the fraction that hit ``max_new_tokens``."""
    length = rollout.response_mask.sum(1).to(torch.float64)
    if length.numel() == 0:
        return {}
    q = torch.quantile(length, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64),
                       interpolation="higher")
    out = {"response_length_mean": float(length.mean()), "response_length_p50": float(q[0]),
           "response_length_p90": float(q[1]), "response_length_p99": float(q[2]),
           "response_length_max": float(length.max())}
    if rollout.truncated is not None:
        out["truncated_rate"] = float(rollout.truncated.float().mean())
    return {prefix + k: v for k, v in out.items()}


EVAL_SUMMED = ("eval/failed_trajectories", "eval/nonfinite_reward_trajectories")


def _episode_weighted(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Ranks' evaluation metrics combined: counts summed, the rest weighted by each rank's
    episodes (response-length percentiles: the weighted mean of the ranks' percentiles)."""
    keys = list(dict.fromkeys(k for m, _ in parts for k in m))   # per-category keys may differ
    out = {}
    for k in keys:
        have = [(m[k], n) for m, n in parts if k in m]
        total = sum(n for _, n in have) or 1
        out[k] = sum(v for v, _ in have) if k in EVAL_SUMMED else \
            sum(v * n for v, n in have) / total
    return out


def evaluate_run(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any,
                 template: PromptTemplate, comm: Comm = LOCAL,
                 routing: StepRouting | None = None) -> dict[str, float]:
    """Held-out metrics of a run's policy with the run's settings (``eval.*`` over ``env.*``,
    ``rollout.*``): what the RL recipe logs and ``grouprl eval`` prints. Single-turn runs also
    report ``eval/accuracy`` (= the success rate). Data parallel: each rank evaluates its block
    of the held-out tasks and every rank returns the combined metrics."""
    ev, ro = cfg.eval, cfg.rollout
    device = next(model.parameters()).device
    shard = shard_bounds(ev.episodes, comm.world_size, comm.rank)
    with autocast(device, compute_dtype(cfg.model.compute_dtype)), gathered(model):
        metrics, _ = evaluate_policy(
            model, tokenizer, env_name=cfg.env.name,
            env_kwargs={**cfg.env.kwargs, **ev.env_kwargs},
            template=template, episodes=ev.episodes, seed_offset=ev.seed_offset,
            max_steps=cfg.env.max_steps, history_length=cfg.agent.history_length,
            temperature=ev.temperature, max_new_tokens=ro.max_new_tokens, stop=tuple(ro.stop),
            seed=cfg.seed, action_tag=cfg.agent.action_tag, allow_plain=cfg.agent.allow_plain,
            raw_action=raw_action(cfg), use_chat_template=cfg.agent.use_chat_template,
            backend=cfg.env.backend, step_timeout=cfg.env.step_timeout,
            num_workers=cfg.env.num_workers, batch_size=ro.generation_batch_size,
            max_prompt_tokens=ro.max_prompt_tokens, shard=shard, routing=routing)
    if comm.distributed:
        metrics = _episode_weighted(comm.gather((metrics, shard[1] - shard[0])))
    if single_turn(cfg):
        metrics["eval/accuracy"] = metrics["eval/success_rate"]
    return metrics
