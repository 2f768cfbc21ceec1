"""The agent trainer: warm start, then rollout → advantages → update, with eval and checkpoints.

The recipe (one screen, nanoGPT style) — :func:`train`::

    policy  = tiny model (tokenizer trained on the env's text) or a local HF model (+ LoRA)
    policy  = behaviour_cloning(policy, expert episodes)          # bc.enabled
    ref     = frozen copy of the warm start (or the LoRA base)     # algorithm.kl_coef > 0
    for it in iterations:
        rollout   = G tasks × n episodes, step-wise rows              (grouprl.agent)
        Â         = compute_advantages(estimator, rollout.batch)    (grouprl.advantages)
        metrics  |= update_policy(policy, rows(Â), loss, KL, H)     (grouprl.train.learner)
        evaluate every eval.every; checkpoint every save_every (atomic)

Determinism: task seeds of iteration ``it`` are a pure function of ``(seed, it)``; sampling uses
one ``torch.Generator`` saved in every checkpoint, evaluation its own fixed generator. On CPU a
run interrupted after a checkpoint and resumed logs exactly the metrics of an uninterrupted run
(timing metrics aside).
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouprl.advantages import compute_advantages, grouping_stats
from grouprl.advantages.segments import segment_stats
from grouprl.agent.prompts import PromptTemplate, template_from_config
from grouprl.agent.rollout import Rollout, collect_rollouts, concat_rollouts, select_groups
from grouprl.envs import EnvPool, make_env
from grouprl.policy import (
    LoraOptions,
    apply_lora,
    build_tiny_policy,
    disable_adapter,
    frozen_copy,
    load_policy,
)
from grouprl.train.bc import clone_behaviour, expert_samples
from grouprl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict
from grouprl.train.evaluate import evaluate_policy, make_generate_fn
from grouprl.train.learner import LearnerRows, batched_logprobs, update_policy
from grouprl.train.metrics import MetricsLogger, ProgressBar

__all__ = ["train", "TrainResult", "task_seeds", "setup_policy", "validate_config"]

WARM_START_DIR = "warm_start"
MONITOR_ITERATION = 10**9
"""The pseudo-iteration whose task seeds form LASER-D's fixed monitor set."""
BASE_MODEL_DIR = "base_model"


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    success_before: float | None
    success_after: float | None
    metrics: list[dict]


def task_seeds(seed: int, iteration: int, count: int, limit: int, attempt: int = 0) -> list[int]:
    """Training task seeds of one iteration: a pure function of (seed, iteration, attempt).

    Iteration −1 draws the tokenizer's text episodes, −2 the behaviour-cloning episodes."""
    rng = np.random.default_rng([seed, iteration + 2, attempt])
    return [int(x) for x in rng.integers(0, limit, size=count)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def validate_config(cfg: TrainConfig) -> PromptTemplate:
    """Checks that need more than one key, done before any work starts."""
    from grouprl.advantages import available_estimators, estimator_options
    from grouprl.envs import available_envs
    from grouprl.losses import SEQUENCE_LOSSES, available_policy_losses, policy_loss_options

    a = cfg.algorithm
    if a.estimator not in available_estimators():
        raise ConfigError(f"algorithm.estimator: {a.estimator!r} is not accepted; choose one of: "
                          f"{', '.join(available_estimators())}")
    try:
        estimator_options(a.estimator, **_estimator_options(cfg))
    except ValueError as err:
        raise ConfigError(f"algorithm.estimator_options: {err}") from None
    losses = available_policy_losses() + SEQUENCE_LOSSES
    if a.loss not in losses:
        raise ConfigError(f"algorithm.loss: {a.loss!r} is not accepted; choose one of: "
                          f"{', '.join(losses)}")
    if a.loss not in SEQUENCE_LOSSES:   # drpo's options are checked with the reasoning keys
        try:
            policy_loss_options(a.loss, **a.loss_options)
        except ValueError as err:
            raise ConfigError(f"algorithm.loss_options: {err}") from None
    if ":" not in cfg.env.name and cfg.env.name not in available_envs():
        raise ConfigError(f"env.name: {cfg.env.name!r} is not accepted; choose one of: "
                          f"{', '.join(available_envs())} or 'package.module:Class'")
    _validate_reasoning(cfg)
    resolve_device(cfg.model.device)
    if cfg.model.path is not None and not Path(cfg.model.path).is_dir():
        raise ConfigError(f"model.path: {cfg.model.path!r} is not a local directory (grouprl "
                          "never downloads at run time; set model.path=null for the tiny model)")
    try:
        return template_from_config(cfg.agent.template)
    except ValueError as err:
        raise ConfigError(f"agent.template: {err}") from None


def raw_action(cfg: TrainConfig) -> bool:
    """``agent.raw_action``; null = true for the built-in one-step env 'reasoning'."""
    return cfg.agent.raw_action if cfg.agent.raw_action is not None else \
        cfg.env.name == "reasoning"


def single_turn(cfg: TrainConfig) -> bool:
    """Whether the run uses single-turn (reasoning) rewards: a one-step env."""
    return cfg.env.max_steps == 1


def uses_reward_pipeline(cfg: TrainConfig) -> bool:
    r = cfg.reward
    return single_turn(cfg) and (cfg.env.name == "reasoning" or r.shaping is not None
                                 or r.format_weight > 0 or cfg.rollout.dot_truncation is not None)


def _validate_reasoning(cfg: TrainConfig) -> None:
    """Reward shaping, DOT, oversampling and the sequence-level losses need single-turn rows."""
    from grouprl.losses import drpo_options
    from grouprl.rewards.shaping import available_shapers, make_shaper
    from grouprl.train.reasoning import dot_options, split_reward_options

    r, ro, a = cfg.reward, cfg.rollout, cfg.algorithm
    needs_single = [(r.shaping is not None, "reward.shaping"),
                    (r.format_weight > 0, "reward.format_weight"),
                    (ro.dot_truncation is not None, "rollout.dot_truncation"),
                    (a.loss == "drpo", "algorithm.loss=drpo"),
                    (a.estimator == "canon", "algorithm.estimator=canon")]
    for active, key in needs_single:
        if active and not single_turn(cfg):
            raise ConfigError(f"{key}: needs single-turn rollouts (one response per task); set "
                              "env.max_steps=1 with a one-step env such as env.name=reasoning")
    if r.shaping is not None and r.shaping not in available_shapers():
        raise ConfigError(f"reward.shaping: {r.shaping!r} is not accepted; choose one of: "
                          f"{', '.join(available_shapers())}")
    try:
        opts, _ = split_reward_options(r.shaping, r.options)
        make_shaper(r.shaping or "none", **opts)
    except ValueError as err:
        raise ConfigError(f"reward.options: {err}") from None
    try:
        dot_options(ro.dot_truncation)
    except ValueError as err:
        raise ConfigError(f"rollout.dot_truncation: {err}") from None
    try:
        oversampling_options(ro.oversampling)
    except ValueError as err:
        raise ConfigError(f"rollout.oversampling: {err}") from None
    if ro.oversampling is not None and not ro.dynamic_sampling:
        raise ConfigError("rollout.oversampling: predictive oversampling replaces the dynamic-"
                          "sampling loop; set rollout.dynamic_sampling=true as well")
    if a.loss == "drpo":
        try:
            drpo_options(**a.loss_options)
        except ValueError as err:
            raise ConfigError(f"algorithm.loss_options: {err}") from None


OVERSAMPLING_OPTIONS = {"window": 20, "init": 1.5, "min": 1.2, "max": 5.0}
"""DOT predictive oversampling (spec §A7.3): history window, initial factor and its bounds."""


def oversampling_options(spec: dict[str, Any] | None) -> dict[str, float] | None:
    if spec is None:
        return None
    unknown = sorted(set(spec) - set(OVERSAMPLING_OPTIONS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown option; accepted: "
                         f"{', '.join(OVERSAMPLING_OPTIONS)}")
    o = {**OVERSAMPLING_OPTIONS, **spec}
    for key, value in o.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{key}: must be a number > 0, got {value!r}")
    if not 1.0 <= o["min"] <= o["init"] <= o["max"]:
        raise ValueError(f"min/init/max: need 1 <= min <= init <= max, got {o['min']}, "
                         f"{o['init']}, {o['max']}")
    return o


def _estimator_options(cfg: TrainConfig, rollout: Rollout | None = None,
                       entropy: torch.Tensor | None = None) -> dict[str, Any]:
    """The estimator's options; with a rollout, the per-row tensors some estimators need
    (REINFORCE++-baseline's token weights, CANON's metric)."""
    opts = dict(cfg.algorithm.estimator_options)
    est = cfg.algorithm.estimator
    if est == "hgpo":
        opts.setdefault("history_length", cfg.agent.history_length)  # K = the memory window
    if rollout is not None and est == "reinforce_pp" and single_turn(cfg):
        opts.setdefault("response_length", rollout.response_mask.sum(1))  # verl token whitening
    if est == "canon":
        opts.setdefault("direction", "length")
        opts.setdefault("l_max", float(cfg.rollout.max_new_tokens))
        if rollout is not None:
            if opts["direction"] == "length":
                opts["metric"] = rollout.response_mask.sum(1).to(torch.float64)
            elif entropy is not None:
                opts["metric"] = entropy
        else:
            opts.setdefault("metric", torch.zeros(0))
    return opts


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """LR multiplier per RL iteration (the scheduler steps once per iteration)."""
    total = max(cfg.iterations, 1)
    warm = cfg.optim.warmup_iterations

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        frac = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
        if cfg.optim.schedule == "linear":
            return 1.0 - frac
        if cfg.optim.schedule == "cosine":
            return 0.5 * (1.0 + float(np.cos(np.pi * frac)))
        return 1.0

    return fn


def resolve_device(name: str) -> torch.device:
    """``model.device``: "auto" = cuda when available; a cuda device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"model.device: {name!r} is not a device; use cpu, cuda, cuda:N or "
                          "auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} requested but CUDA is not available; use cpu")
    return device


def setup_policy(cfg: TrainConfig, run_dir: Path, template: PromptTemplate,
                 echo: Callable[[str], None]) -> tuple[torch.nn.Module, Any]:
    """The initial policy: a saved warm start, a local model, or a freshly built tiny model."""
    warm = run_dir / WARM_START_DIR
    if (warm / "config.json").is_file():
        return load_policy(warm, dtype=cfg.model.dtype)
    if cfg.model.path is not None:
        return load_policy(cfg.model.path, dtype=cfg.model.dtype,
                           trust_remote_code=cfg.model.trust_remote_code)
    base = run_dir / BASE_MODEL_DIR
    if (base / "config.json").is_file():
        return load_policy(base, dtype=cfg.model.dtype)
    t = cfg.model.tiny
    samples = expert_samples(cfg.env.name, cfg.env.kwargs,
                             task_seeds(cfg.seed, -1, t.tokenizer_episodes, cfg.eval.seed_offset),
                             template=template, history_length=cfg.agent.history_length,
                             max_steps=cfg.env.max_steps, action_tag=cfg.agent.action_tag,
                             tokenizer=None, use_chat_template=False)
    texts = [s.prompt for s in samples] + [s.response for s in samples]
    tag = cfg.agent.action_tag
    specials: tuple[str, ...] = (f"<{tag}>", f"</{tag}>") if tag else ()
    probe = make_env(cfg.env.name, **cfg.env.kwargs)
    specials += tuple(x for x in getattr(probe, "special_tokens", ()) if x not in specials)
    isolate = t.isolate_chars
    if isolate is None:
        isolate = getattr(probe, "isolate_chars", None) or getattr(probe, "grid_symbols", "") \
            or ""
    probe.close()
    echo(f"building the tiny model (tokenizer on {len(texts)} texts from {cfg.env.name})")
    model, tok = build_tiny_policy(texts, vocab_size=t.vocab_size, special_tokens=specials,
                                   isolate_chars=isolate,
                                   seed=cfg.seed, save_dir=base, hidden_size=t.hidden_size,
                                   num_layers=t.num_layers, num_heads=t.num_heads,
                                   num_kv_heads=t.num_kv_heads,
                                   intermediate_size=t.intermediate_size)
    return model, tok


class _StopRequest:
    """First Ctrl-C / SIGTERM: finish the current iteration, checkpoint, exit. Second: abort."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this iteration, then saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)


@contextmanager
def _stop_on_signal(stop: _StopRequest):
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, *, resume: bool = False, echo: Callable[[str], None] | None = None
          ) -> TrainResult:
    """Run the whole recipe described in the module docstring; returns a summary."""
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if cfg.mode == "preference":
        from grouprl.train.preference import train_preference

        return train_preference(cfg, resume=resume, echo=echo)
    template = validate_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run_dir: {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or choose another run_dir")
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    _seed_everything(cfg.seed)

    model, tok = setup_policy(cfg, run_dir, template, echo)
    device = resolve_device(cfg.model.device)
    model.to(device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ev = cfg.eval
    ro = cfg.rollout
    stop = tuple(ro.stop)

    def run_eval() -> dict[str, float]:
        m, _ = evaluate_policy(
            model, tok, env_name=cfg.env.name, env_kwargs={**cfg.env.kwargs, **ev.env_kwargs},
            template=template,
            episodes=ev.episodes, seed_offset=ev.seed_offset, max_steps=cfg.env.max_steps,
            history_length=cfg.agent.history_length, temperature=ev.temperature,
            max_new_tokens=ro.max_new_tokens, stop=stop, seed=cfg.seed,
            action_tag=cfg.agent.action_tag, allow_plain=cfg.agent.allow_plain,
            raw_action=raw_action(cfg),
            use_chat_template=cfg.agent.use_chat_template, backend=cfg.env.backend,
            step_timeout=cfg.env.step_timeout, num_workers=cfg.env.num_workers,
            batch_size=ro.generation_batch_size)
        if single_turn(cfg):
            m["eval/accuracy"] = m["eval/success_rate"]
        return m

    # ---- warm start (behaviour cloning), saved once so resume and studies reuse it
    logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg))
    warm = run_dir / WARM_START_DIR
    if cfg.bc.enabled and not (warm / "config.json").is_file():
        b = cfg.bc
        t0 = time.perf_counter()
        samples = expert_samples(cfg.env.name, cfg.env.kwargs,
                                 task_seeds(cfg.seed, -2, b.episodes, ev.seed_offset),
                                 template=template, history_length=cfg.agent.history_length,
                                 max_steps=cfg.env.max_steps, action_tag=cfg.agent.action_tag,
                                 tokenizer=tok, use_chat_template=cfg.agent.use_chat_template)
        echo(f"behaviour cloning on {len(samples)} expert steps from {b.episodes} episodes")
        losses = clone_behaviour(model, tok, samples, epochs=b.epochs, batch_size=b.batch_size,
                                 lr=b.lr, max_updates=b.max_updates, seed=cfg.seed)
        model.save_pretrained(warm, safe_serialization=True)
        tok.save_pretrained(warm)
        echo(f"behaviour cloning: {len(losses)} updates, loss {losses[0]:.3f} → "
             f"{losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s)")
        logger.log(0, {"bc/loss_first": losses[0], "bc/loss_last": losses[-1],
                       "bc/updates": float(len(losses)), "bc/samples": float(len(samples)),
                       "timing/bc_s": time.perf_counter() - t0})

    # ---- reference model and LoRA
    ref_model = None
    ref_context = None
    if cfg.model.lora.enabled:
        lo = cfg.model.lora
        model = apply_lora(model, LoraOptions(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                                              target_modules=tuple(lo.target_modules)))
        if cfg.algorithm.kl_coef > 0:
            ref_model, ref_context = model, (lambda: disable_adapter(model))
    elif cfg.algorithm.kl_coef > 0:
        ref_model = frozen_copy(model)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    sampling = torch.Generator(device=device).manual_seed(cfg.seed)
    shuffling = torch.Generator().manual_seed(cfg.seed + 1)
    generators = {"sampling": sampling, "shuffling": shuffling}
    counters = {"skipped_updates": 0, "failed_trajectories": 0, "truncated_generations": 0,
                "env_steps": 0}

    stage = make_reward_stage(cfg, tok)
    start = 0
    success_before: float | None = None
    if ckpt is not None:
        info = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                               generators=generators)
        start = int(info["iteration"])
        counters.update(info["state"].get("counters", {}))
        stage.load_state_dict(info["state"].get("reward_stage", {}))
        success_before = info["state"].get("success_before")
        logger.truncate_after(start)
        echo(f"resumed from {ckpt} at iteration {start}")
    elif resume:
        logger.truncate_after(0)

    if start == 0 and success_before is None:
        m = run_eval()
        success_before = m["eval/success_rate"]
        logger.log(0, m)
        echo(f"held-out success before RL: {success_before:.1%} "
             f"({ev.episodes} tasks, return {m['eval/episode_return']:.2f})")

    pools = EnvPools(lambda n: EnvPool(cfg.env.name, cfg.env.kwargs, n,
                                       backend=cfg.env.backend, max_steps=cfg.env.max_steps,
                                       step_timeout=cfg.env.step_timeout,
                                       num_workers=cfg.env.num_workers))
    pools.get(ro.groups_per_batch * ro.group_size)
    generate_fn = make_generate_fn(model, tok, max_new_tokens=ro.max_new_tokens,
                                   temperature=ro.temperature, top_p=ro.top_p, stop=stop,
                                   generator=sampling, batch_size=ro.generation_batch_size)
    vocabulary: dict = {}
    bar = ProgressBar(cfg.iterations, desc="RL", initial=start, enabled=cfg.logging.progress)
    last_success = success_before
    stop_request = _StopRequest()
    completed = start
    try:
        with _stop_on_signal(stop_request):
            for it in range(start, cfg.iterations):
                metrics = _iteration(cfg, it, model, ref_model, ref_context, optimizer, pools,
                                     generate_fn, template, tok, pad_id, vocabulary, shuffling,
                                     stage)
                scheduler.step()
                for k in ("skipped_updates", "failed_trajectories", "truncated_generations"):
                    counters[k] += int(metrics.get(f"train/{k}", 0))
                counters["env_steps"] += int(metrics.get("train/rows", 0))
                metrics["train/env_steps_total"] = float(counters["env_steps"])
                metrics["train/skipped_updates_total"] = float(counters["skipped_updates"])
                metrics["env/failures_total"] = float(pools.failures)
                completed = it + 1
                if (ev.every and completed % ev.every == 0) or completed == cfg.iterations:
                    metrics.update(run_eval())
                    last_success = metrics["eval/success_rate"]
                logger.log(completed, metrics)
                bar.update(completed, success=metrics["train/success_rate"],
                           eval=last_success if last_success is not None else float("nan"))
                if stop_request.requested or (cfg.save_every and completed % cfg.save_every == 0) \
                        or completed == cfg.iterations:
                    _save(run_dir, cfg, completed, model, optimizer, scheduler, generators,
                          counters, success_before, stage)
                if stop_request.requested:
                    echo(f"stopped after iteration {completed}; checkpoint saved — continue "
                         f"with: grouprl train --resume {run_dir}")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        pools.close()
        stage.close()
        logger.close()
    from grouprl.train.metrics import read_metrics

    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("eval/success_rate") is not None]
    after = evals[-1]["eval/success_rate"] if evals else None
    if after is not None and success_before is not None:
        echo(f"held-out success: before RL {success_before:.1%} → after RL {after:.1%} "
             f"({cfg.iterations} iterations of {cfg.algorithm.estimator})")
    return TrainResult(run_dir, cfg.iterations, success_before, after, rows)


def _save(run_dir: Path, cfg: TrainConfig, iteration: int, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Any, generators: dict,
          counters: dict, success_before: float | None, stage: RewardStage) -> None:
    save_checkpoint(run_dir, iteration=iteration, model=model, optimizer=optimizer,
                    scheduler=scheduler, config=config_to_dict(cfg), generators=generators,
                    state={"counters": counters, "success_before": success_before,
                           "reward_stage": stage.state_dict()},
                    keep_last=cfg.keep_last)


def informative_groups(episode_group: torch.Tensor, episode_return: torch.Tensor
                       ) -> torch.Tensor:
    """Sorted ids of the groups whose episode returns are not all equal (DAPO's filter)."""
    groups, codes = torch.unique(episode_group, return_inverse=True)
    constant = segment_stats(episode_return.double(), codes, groups.numel(),
                             unbiased=False).constant
    return groups[~constant]


class RewardStage:
    """What runs between a rollout try and dynamic sampling: single-turn reward shaping
    (:class:`grouprl.train.reasoning.ReasoningRewards`) and DOT's oversampling history."""

    def __init__(self, rewards: Any = None, oversampling: dict[str, float] | None = None,
                 probe: Any = None) -> None:
        self.rewards = rewards
        self.oversampling = oversampling
        self.probe = probe  # an env instance whose verifier re-scores DOT-truncated responses
        self.pass_rates: list[float] = []


    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": self.rewards.state_dict() if self.rewards is not None else {},
                "pass_rates": list(self.pass_rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rewards is not None and state.get("rewards"):
            self.rewards.load_state_dict(state["rewards"])
        self.pass_rates = [float(x) for x in state.get("pass_rates", [])]


def make_reward_stage(cfg: TrainConfig, tokenizer: Any) -> RewardStage:
    """The reward stage of a run: shaping for single-turn envs, DOT oversampling history."""
    from grouprl.train.reasoning import ReasoningRewards

    oversampling = oversampling_options(cfg.rollout.oversampling)
    if not uses_reward_pipeline(cfg):
        return RewardStage(None, oversampling)
    probe = verifier = None
    if cfg.rollout.dot_truncation is not None:
        probe = make_env(cfg.env.name, **cfg.env.kwargs)
        verifier = getattr(probe, "verifier", None)
        if verifier is None:
            probe.close()
            raise ConfigError(f"rollout.dot_truncation: env {cfg.env.name!r} has no verifier "
                              "to re-score truncated responses (use env.name=reasoning)")
    r = cfg.reward
    rewards = ReasoningRewards(r.shaping, r.options, tokenizer=tokenizer, verifier=verifier,
                               max_new_tokens=cfg.rollout.max_new_tokens,
                               format_weight=r.format_weight, format_style=r.format_style,
                               dot=cfg.rollout.dot_truncation)
    return RewardStage(rewards, oversampling, probe)


class EnvPools:
    """Env pools by size: the rollout's usual size, plus the sizes DOT's oversampling asks for
    (made on first use and kept; serial/thread pools of a cached-dataset env are cheap)."""

    def __init__(self, make: Callable[[int], EnvPool]) -> None:
        self._make = make
        self._pools: dict[int, EnvPool] = {}

    def get(self, num_envs: int) -> EnvPool:
        if num_envs not in self._pools:
            self._pools[num_envs] = self._make(num_envs)
        return self._pools[num_envs]

    @property
    def failures(self) -> int:
        return sum(int(p.stats.get("failures", 0)) for p in self._pools.values())

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self._pools.clear()


def _rollout_with_sampling(cfg: TrainConfig, it: int, pools: EnvPools, generate_fn: Callable,
                           template: PromptTemplate, tok: Any, pad_id: int,
                           vocabulary: dict, stage: RewardStage | None = None
                           ) -> tuple[Rollout, dict[str, float]]:
    """Rollout, with dynamic sampling (spec §1.1) when enabled: drop groups whose episode
    returns are all equal and roll out again until ``groups_per_batch`` groups are kept or
    ``max_sample_batches`` tries are spent (the last try keeps everything).

    Single-turn rewards are shaped per try, before the filter. With ``rollout.oversampling``
    (DOT's predictive sampling, spec §A7.3) the first try samples ``⌈B·f⌉`` tasks with
    ``f = clip((1/mean pass) · (1 + std pass), min, max)`` over the last ``window`` pass rates,
    and the first B informative groups are kept; further tries only run when it fell short.
    """
    from grouprl.rewards.length import predictive_oversampling_factor

    ro = cfg.rollout
    stage = stage or RewardStage()
    kept: list[Rollout] = []
    n_kept = 0
    tries = 0
    extra: dict[str, float] = {}
    shaped_metrics: list[dict[str, float]] = []
    for attempt in range(ro.max_sample_batches if ro.dynamic_sampling else 1):
        tries += 1
        n_tasks = ro.groups_per_batch
        if stage.oversampling is not None and attempt == 0:
            o = stage.oversampling
            f = predictive_oversampling_factor(stage.pass_rates[-int(o["window"]):],
                                               init=o["init"], low=o["min"], high=o["max"])
            n_tasks = int(np.ceil(ro.groups_per_batch * f))
            extra["train/oversampling_factor"] = float(f)
        seeds = task_seeds(cfg.seed, it, n_tasks, cfg.eval.seed_offset, attempt)
        pool = pools.get(n_tasks * ro.group_size)
        r = collect_rollouts(
            pool, generate_fn, template=template, task_seeds=seeds, group_size=ro.group_size,
            max_steps=cfg.env.max_steps, history_length=cfg.agent.history_length,
            action_tag=cfg.agent.action_tag, allow_plain=cfg.agent.allow_plain,
            raw_action=raw_action(cfg), tokenizer=tok,
            use_chat_template=cfg.agent.use_chat_template, pad_token_id=pad_id,
            group_offset=attempt * 1_000_000,
            traj_offset=attempt * 1_000_000 * ro.group_size, vocabulary=vocabulary)
        if stage.rewards is not None:
            r, m = stage.rewards.apply(r, it)
            shaped_metrics.append(m)
        if not ro.dynamic_sampling:
            extra.update(_mean_metrics(shaped_metrics))
            return r, {"train/sample_batches": 1.0, **extra}
        last = attempt == ro.max_sample_batches - 1
        varied = informative_groups(r.episode_group, r.episode_return)
        if attempt == 0:
            total = int(torch.unique(r.episode_group).numel())
            stage.pass_rates.append(varied.numel() / max(total, 1))
        if last and n_kept + varied.numel() < ro.groups_per_batch:
            varied = torch.unique(r.episode_group)
        need = ro.groups_per_batch - n_kept
        varied = varied[:need]
        if varied.numel():
            kept.append(select_groups(r, varied, pad_id))
            n_kept += int(varied.numel())
        if n_kept >= ro.groups_per_batch:
            break
    extra.update(_mean_metrics(shaped_metrics))
    if stage.oversampling is not None and stage.pass_rates:
        extra["train/pass_rate"] = stage.pass_rates[-1]
    return concat_rollouts(kept, pad_id), {"train/sample_batches": float(tries), **extra}


def _mean_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over the tries of one iteration (counts are summed)."""
    out: dict[str, float] = {}
    for key in {k for p in parts for k in p}:
        values = [p[key] for p in parts if key in p]
        summed = key.endswith(("failures", "unparsable_gold", "dot_truncated"))
        out[key] = float(sum(values)) if summed else float(sum(values) / len(values))
    return out


def _iteration(cfg: TrainConfig, it: int, model: torch.nn.Module, ref_model: Any,
               ref_context: Any, optimizer: torch.optim.Optimizer, pools: EnvPools,
               generate_fn: Callable, template: PromptTemplate, tok: Any, pad_id: int,
               vocabulary: dict, shuffling: torch.Generator, stage: RewardStage
               ) -> dict[str, float]:
    a, ro = cfg.algorithm, cfg.rollout
    t0 = time.perf_counter()
    extra: dict[str, float] = {}
    with torch.no_grad():
        rewards = stage.rewards
        if rewards is not None and rewards.monitor_due(it):    # LASER-D/DE targets (§A4)
            extra.update(_monitor(cfg, rewards, pools, generate_fn, template, tok, pad_id,
                                  vocabulary, it))
        rollout, sampled = _rollout_with_sampling(cfg, it, pools, generate_fn, template, tok,
                                                  pad_id, vocabulary, stage)
        extra.update(sampled)
    t1 = time.perf_counter()
    entropy = None
    if a.estimator == "canon" and a.estimator_options.get("direction") == "entropy":
        entropy = mean_token_entropy(model, rollout, temperature=ro.temperature,
                                     micro_batch_size=a.micro_batch_size)
    adv = compute_advantages(a.estimator, rollout.batch,
                             **_estimator_options(cfg, rollout, entropy))
    t2 = time.perf_counter()
    rows = LearnerRows(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                       rollout.response_mask, adv)
    loss_options = dict(a.loss_options)
    if a.loss == "drpo":
        rows.group = torch.as_tensor(rollout.batch.group_id).long()
        rows.correct = torch.as_tensor(rollout.batch.success).bool()
        if loss_options.get("l_max") is None:
            loss_options["l_max"] = float(ro.max_new_tokens)   # verl: the padded width
    if a.ppo_epochs > 1 or a.num_mini_batches > 1:
        rows.old_logp = batched_logprobs(model, rows, temperature=ro.temperature,
                                         micro_batch_size=a.micro_batch_size)
    if a.kl_coef > 0:
        rows.ref_logp = batched_logprobs(ref_model, rows, temperature=ro.temperature,
                                         micro_batch_size=a.micro_batch_size,
                                         context=ref_context)
    upd = update_policy(model, optimizer, rows, loss=a.loss, loss_options=loss_options,
                        loss_agg=a.loss_agg, kl_coef=a.kl_coef, kl_kind=a.kl_kind,
                        entropy_coef=a.entropy_coef, ppo_epochs=a.ppo_epochs,
                        num_mini_batches=a.num_mini_batches,
                        micro_batch_size=a.micro_batch_size, grad_clip=cfg.optim.grad_clip,
                        temperature=ro.temperature, generator=shuffling)
    t3 = time.perf_counter()
    m = rollout.metrics
    out = {f"train/{k}": float(v) for k, v in m.items()}
    out.update(extra)
    out.update(upd)
    out["train/advantage_mean"] = float(adv.mean()) if adv.numel() else 0.0
    out["train/advantage_abs"] = float(adv.abs().mean()) if adv.numel() else 0.0
    out["train/advantage_nonzero"] = float((adv != 0).double().mean()) if adv.numel() else 0.0
    out["train/response_tokens"] = float(rollout.response_mask.sum())
    if rollout.batch.state is not None:   # how often states repeat (step-level credit's premise)
        depth = _estimator_options(cfg).get("history_length", cfg.agent.history_length)
        out.update({f"group/{k}": v for k, v in grouping_stats(rollout.batch, depth).items()})
    out.update({"timing/rollout_s": t1 - t0, "timing/advantage_s": t2 - t1,
                "timing/update_s": t3 - t2, "timing/iteration_s": t3 - t0})
    return out


@torch.no_grad()
def mean_token_entropy(model: torch.nn.Module, rollout: Rollout, *, temperature: float,
                       micro_batch_size: int) -> torch.Tensor:
    """(N,) mean per-token entropy of each response under ``model`` (CANON's entropy metric,
    spec §A10, from the old-policy pass)."""
    from grouprl.policy import response_logprobs
    from grouprl.train.learner import micro_slices

    rows = LearnerRows(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                       rollout.response_mask, torch.zeros(len(rollout)))
    out = torch.zeros(len(rollout), dtype=torch.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for idx, mb in micro_slices(rows, torch.arange(len(rows)), micro_batch_size, device):
        _, ent = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                   mb["response_ids"], mb["response_mask"],
                                   temperature=temperature, with_entropy=True)
        mask = mb["response_mask"].to(ent.dtype)
        out[idx] = ((ent * mask).sum(1) / mask.sum(1).clamp_min(1)).double().cpu()
    model.train(was_training)
    return out


def _monitor(cfg: TrainConfig, rewards: Any, pools: EnvPools, generate_fn: Callable,
             template: PromptTemplate, tok: Any, pad_id: int, vocabulary: dict, it: int
             ) -> dict[str, float]:
    """LASER-D/DE monitor (spec §A4): roll out a FIXED set of training prompts with the
    training group size and recompute the per-bucket length targets from it."""
    ro = cfg.rollout
    prompts = rewards.monitor["monitor_prompts"]
    seeds = task_seeds(cfg.seed, MONITOR_ITERATION, prompts, cfg.eval.seed_offset)  # fixed set
    r = collect_rollouts(
        pools.get(prompts * ro.group_size), generate_fn, template=template, task_seeds=seeds,
        group_size=ro.group_size, max_steps=cfg.env.max_steps,
        history_length=cfg.agent.history_length, action_tag=cfg.agent.action_tag,
        allow_plain=cfg.agent.allow_plain, tokenizer=tok, raw_action=raw_action(cfg),
        use_chat_template=cfg.agent.use_chat_template, pad_token_id=pad_id,
        vocabulary=vocabulary)
    return rewards.update_targets(r, it)


def load_run_config(run_dir: str | Path, overrides: Any = ()) -> TrainConfig:
    """The resolved config a run saved in ``run_dir/config.json``, plus overrides."""
    from grouprl.train.config import _build, apply_overrides, parse_overrides

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"run_dir: {str(run_dir)!r} holds no config.json (not a grouprl run)")
    data = json.loads(path.read_text())
    extra = parse_overrides(overrides) if not isinstance(overrides, dict) else overrides
    return _build(TrainConfig, apply_overrides(data, extra), "")


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None
                        ) -> tuple[TrainConfig, torch.nn.Module, Any, PromptTemplate, int]:
    """(config, model, tokenizer, template, iteration) of a run's latest (or given) checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    template = validate_config(cfg) if cfg.model.path is None or Path(cfg.model.path).is_dir() \
        else template_from_config(cfg.agent.template)
    model, tok = setup_policy(cfg, run_dir, template, lambda s: None)
    if cfg.model.lora.enabled:
        lo = cfg.model.lora
        model = apply_lora(model, LoraOptions(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                                              target_modules=tuple(lo.target_modules)))
    model.to(resolve_device(cfg.model.device))
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    iteration = 0
    if ckpt is not None:
        iteration = int(load_checkpoint(ckpt, model=model, restore_rng=False)["iteration"])
    model.eval()
    return cfg, model, tok, template, iteration
