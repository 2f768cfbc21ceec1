"""Sampling: task seeds, env pools, the rollout of one iteration with the reward stage, dynamic
sampling (DAPO's filter, spec-agentic-credit §1.1) and DOT's predictive oversampling (spec-rewards
§A7.3), and the reward stage's monitor rollouts (LASER-D/DE, §A4).

:meth:`Sampler.rollout` of iteration ``it``::

    open a new fault window on every env pool  (env.max_failed_fraction: more failed
                                                 trajectories raise EnvFaultBudgetExceeded)
    for attempt in tries (1, or rollout.max_sample_batches with dynamic sampling):
        n_tasks   = groups_per_batch  (·f on the first try with oversampling,
                    f = clip((1/mean pass)·(1 + std pass), min, max) over the last window)
        rollout   = collect_rollouts(task_seeds(seed, it, n_tasks, attempt))    (grouprl.agent)
        rollout   = reward_stage(rollout)            (outcome → training reward, once)
        keep the groups whose episode returns differ (all of them on the last try)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from grouprl.advantages.segments import segment_stats
from grouprl.agent.prompts import PromptTemplate
from grouprl.agent.rollout import StepRouting, collect_rollouts
from grouprl.batch import Rollout, concat_rollouts, select_groups
from grouprl.distributed import LOCAL, Comm, shard_bounds
from grouprl.envs import EnvPool, make_env
from grouprl.envs.pool import isolate_native_calls
from grouprl.rewards.length import predictive_oversampling_factor
from grouprl.rewards.stage import RewardStage
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.validation import check_options, check_range

__all__ = ["task_seeds", "informative_groups", "EnvPools", "Sampler", "OVERSAMPLING_OPTIONS",
           "oversampling_options", "uses_reward_stage", "make_reward_stage", "raw_action",
           "single_turn", "MONITOR_ITERATION"]

MONITOR_ITERATION = 10**9
"""The pseudo-iteration whose task seeds form LASER-D's fixed monitor set."""

OVERSAMPLING_OPTIONS = {"window": 20, "init": 1.5, "min": 1.2, "max": 5.0}
"""DOT predictive oversampling (spec §A7.3): history window, initial factor and its bounds."""


def task_seeds(seed: int, iteration: int, count: int, limit: int, attempt: int = 0) -> list[int]:
    """Training task seeds of one iteration: a pure function of (seed, iteration, attempt).

    Iteration −1 draws the tokenizer's text episodes, −2 the behaviour-cloning episodes."""
    rng = np.random.default_rng([seed, iteration + 2, attempt])
    return [int(x) for x in rng.integers(0, limit, size=count)]


def informative_groups(episode_group: torch.Tensor, episode_return: torch.Tensor
                       ) -> torch.Tensor:
    """Sorted ids of the groups whose episode returns are not all equal (DAPO's filter)."""
    groups, codes = torch.unique(episode_group, return_inverse=True)
    constant = segment_stats(episode_return.double(), codes, groups.numel(),
                             unbiased=False).constant
    return groups[~constant]


def oversampling_options(spec: dict[str, Any] | None) -> dict[str, float] | None:
    """Validated ``rollout.oversampling`` (None = off), defaults filled in."""
    if spec is None:
        return None
    check_options("rollout.oversampling", spec, tuple(OVERSAMPLING_OPTIONS))
    o = {**OVERSAMPLING_OPTIONS, **spec}
    for key, value in o.items():
        check_range(key, value, 0.0, low_open=True)
    if not 1.0 <= o["min"] <= o["init"] <= o["max"]:
        raise ValueError(f"min/init/max: need 1 <= min <= init <= max, got {o['min']}, "
                         f"{o['init']}, {o['max']}")
    return o


def raw_action(cfg: TrainConfig) -> bool:
    """``agent.raw_action``; null = true for the built-in one-step env 'reasoning'."""
    return cfg.agent.raw_action if cfg.agent.raw_action is not None else \
        cfg.env.name == "reasoning"


def single_turn(cfg: TrainConfig) -> bool:
    """Whether a row is a whole response (a one-step env): single-turn rewards apply."""
    return cfg.env.max_steps == 1


def uses_reward_stage(cfg: TrainConfig) -> bool:
    """Single-turn runs of the reasoning env, or with shaping, a format reward or DOT."""
    r = cfg.reward
    return single_turn(cfg) and (cfg.env.name == "reasoning" or r.shaping is not None
                                 or r.format_weight > 0 or cfg.rollout.dot_truncation is not None)


def make_reward_stage(cfg: TrainConfig, tokenizer: Any) -> tuple[RewardStage | None, Any]:
    """``(stage, probe)``: the run's reward stage (None: the env's rewards are the training
    rewards) and the env instance whose verifier re-scores DOT-truncated responses."""
    if not uses_reward_stage(cfg):
        return None, None
    probe = verifier = None
    if cfg.rollout.dot_truncation is not None:
        # the probe's verifier runs checks for the trainer's process: isolated (native hangs)
        probe = isolate_native_calls(make_env(cfg.env.name, **cfg.env.kwargs))
        verifier = getattr(probe, "verifier", None)
        if verifier is None:
            probe.close()
            raise ConfigError(f"rollout.dot_truncation: env {cfg.env.name!r} has no verifier "
                              "to re-score truncated responses (use env.name=reasoning)")
    r = cfg.reward
    stage = RewardStage(r.shaping, r.options, tokenizer=tokenizer, verifier=verifier,
                        max_new_tokens=cfg.rollout.max_new_tokens, format_weight=r.format_weight,
                        format_style=r.format_style, dot=cfg.rollout.dot_truncation)
    return stage, probe


class EnvPools:
    """Env pools by size: the rollout's usual size, plus the sizes oversampling and monitor
    rollouts ask for (made on first use and kept).  Each pool has its own fault window
    (:class:`~grouprl.envs.EnvPool`: ``max_failed_fraction``); :meth:`new_window` opens a new
    one on every pool, and pools made later start with a fresh one."""

    def __init__(self, make: Callable[[int], EnvPool]) -> None:
        self._make = make
        self._pools: dict[int, EnvPool] = {}

    def get(self, num_envs: int) -> EnvPool:
        if num_envs not in self._pools:
            self._pools[num_envs] = self._make(num_envs)
        return self._pools[num_envs]

    def new_window(self) -> None:
        """Open a new fault window on every pool (the start of an iteration's rollout)."""
        for p in self._pools.values():
            p.new_window()

    @property
    def failures(self) -> int:
        """Env failures over the run (every pool's ``stats``)."""
        return sum(int(p.stats.get("failures", 0)) for p in self._pools.values())

    @property
    def window_failures(self) -> int:
        """Env failures in the current windows."""
        return sum(int(p.window["failures"]) for p in self._pools.values())

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self._pools.clear()


def _mean_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over the tries of one iteration (counts are summed)."""
    out: dict[str, float] = {}
    for key in {k for p in parts for k in p}:
        values = [p[key] for p in parts if key in p]
        summed = key.endswith(("failures", "unparsable_gold", "dot_truncated"))
        out[key] = float(sum(values)) if summed else float(sum(values) / len(values))
    return out


class Sampler:
    """Rollouts of a run: env pools, generation, the reward stage and dynamic sampling."""

    def __init__(self, cfg: TrainConfig, generate_fn: Callable, template: PromptTemplate,
                 tokenizer: Any, comm: Comm = LOCAL,
                 step_routing: Callable[[], StepRouting | None] | None = None) -> None:
        self.cfg, self.generate_fn, self.template, self.tokenizer = \
            cfg, generate_fn, template, tokenizer
        self.step_routing = step_routing       # a routed policy's step router per rollout
        self.comm = comm
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stage, self._probe = make_reward_stage(cfg, tokenizer)
        self.oversampling = oversampling_options(cfg.rollout.oversampling)
        self.pass_rates: list[float] = []
        self.vocabulary: dict = {}
        e = cfg.env
        self.pools = EnvPools(lambda n: EnvPool(e.name, e.kwargs, n, backend=e.backend,
                                                max_steps=e.max_steps,
                                                step_timeout=e.step_timeout,
                                                num_workers=e.num_workers,
                                                max_failed_fraction=e.max_failed_fraction))
        lo, hi = shard_bounds(cfg.rollout.groups_per_batch, comm.world_size, comm.rank)
        self.pools.get((hi - lo) * cfg.rollout.group_size)

    def _collect(self, seeds: list[int], attempt: int = 0, first: int = 0) -> Rollout:
        """Groups ``seeds`` (the ``first``-th task on: its group id, so ids are global)."""
        cfg, ro = self.cfg, self.cfg.rollout
        offset = attempt * 1_000_000 + first
        return collect_rollouts(
            self.pools.get(len(seeds) * ro.group_size), self.generate_fn,
            template=self.template, task_seeds=seeds, group_size=ro.group_size,
            max_steps=cfg.env.max_steps, history_length=cfg.agent.history_length,
            action_tag=cfg.agent.action_tag, allow_plain=cfg.agent.allow_plain,
            raw_action=raw_action(cfg), tokenizer=self.tokenizer,
            use_chat_template=cfg.agent.use_chat_template, pad_token_id=self.pad_id,
            group_offset=offset, traj_offset=offset * ro.group_size, vocabulary=self.vocabulary,
            routing=self.step_routing() if self.step_routing is not None else None)

    def refresh_reward_targets(self, it: int) -> dict[str, float]:
        """Reward shapers whose targets come from a monitor rollout (LASER-D/DE, spec §A4)
        recompute them from a FIXED set of training prompts when due."""
        prompts = self.stage.monitor_due(it) if self.stage is not None else 0
        if not prompts:
            return {}
        seeds = task_seeds(self.cfg.seed, MONITOR_ITERATION, prompts, self.cfg.eval.seed_offset)

        def monitor() -> dict[str, float]:       # data parallel: rank 0's targets for all
            self.pools.new_window()
            return self.stage.update_targets(self._collect(seeds), it)

        if not self.comm.distributed:
            return monitor()
        metrics = monitor() if self.comm.is_main else {}
        self.stage.load_state_dict(self.comm.broadcast(self.stage.state_dict()))
        return metrics

    def rollout(self, it: int) -> tuple[Rollout, dict[str, float]]:
        """The rows of iteration ``it`` (module docstring) and sampling metrics, among them
        ``env/failures`` (trajectories of this rollout dropped because their env raised,
        crashed or hung).  Raises :class:`~grouprl.envs.pool.EnvFaultBudgetExceeded` when more
        trajectories fail than ``env.max_failed_fraction`` allows."""
        self.pools.new_window()
        r, metrics = self._rollout(it)
        metrics["env/failures"] = float(self.pools.window_failures)
        return r, metrics

    def _rollout(self, it: int) -> tuple[Rollout, dict[str, float]]:
        """This rank's share: task seeds are drawn for the whole batch (the same on every rank)
        and each rank rolls out its contiguous block of whole groups (spec-scale-out §2); with
        dynamic sampling each rank fills its own quota of ``groups_per_batch``."""
        ro, comm = self.cfg.rollout, self.comm
        q_lo, q_hi = shard_bounds(ro.groups_per_batch, comm.world_size, comm.rank)
        quota = q_hi - q_lo
        kept: list[Rollout] = []
        n_kept = tries = 0
        extra: dict[str, float] = {}
        shaped: list[dict[str, float]] = []
        for attempt in range(ro.max_sample_batches if ro.dynamic_sampling else 1):
            tries += 1
            n_tasks = ro.groups_per_batch
            if self.oversampling is not None and attempt == 0:
                o = self.oversampling
                f = predictive_oversampling_factor(self.pass_rates[-int(o["window"]):],
                                                   init=o["init"], low=o["min"], high=o["max"])
                n_tasks = int(np.ceil(ro.groups_per_batch * f))
                extra["train/oversampling_factor"] = float(f)
            seeds = task_seeds(self.cfg.seed, it, n_tasks, self.cfg.eval.seed_offset, attempt)
            lo, hi = shard_bounds(len(seeds), comm.world_size, comm.rank)
            r = self._collect(seeds[lo:hi], attempt, lo)
            if self.stage is not None:
                r, m = self.stage.apply(r, it)
                shaped.append(m)
            if not ro.dynamic_sampling:
                return r, {"train/sample_batches": 1.0, **extra, **_mean_metrics(shaped)}
            varied = informative_groups(r.episode_group, r.episode_return)
            if attempt == 0:                                   # over every rank's groups
                informative, total = comm.sum_floats(
                    [varied.numel(), torch.unique(r.episode_group).numel()])
                self.pass_rates.append(informative / max(total, 1))
            if attempt == ro.max_sample_batches - 1 and n_kept + varied.numel() < quota:
                varied = torch.unique(r.episode_group)         # the last try keeps everything
            varied = varied[:quota - n_kept]
            if varied.numel():
                kept.append(select_groups(r, varied))
                n_kept += int(varied.numel())
            if n_kept >= quota:
                break
        extra.update(_mean_metrics(shaped))
        if self.oversampling is not None and self.pass_rates:
            extra["train/pass_rate"] = self.pass_rates[-1]
        return concat_rollouts(kept, self.pad_id), {"train/sample_batches": float(tries), **extra}

    @property
    def env_failures(self) -> int:
        return self.pools.failures

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": self.stage.state_dict() if self.stage is not None else {},
                "pass_rates": list(self.pass_rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.stage is not None and state.get("rewards"):
            self.stage.load_state_dict(state["rewards"])
        self.pass_rates = [float(x) for x in state.get("pass_rates", [])]

    def close(self) -> None:
        self.pools.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
