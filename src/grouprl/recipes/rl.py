"""The RL recipe (agent and reasoning RL): warm start, then rollout → rewards → advantages →
update → log → evaluate → save, each step one component (:mod:`grouprl.train`)::

    policy  = tiny model (tokenizer trained on the env's text) or a local HF model (+ LoRA)
    policy  = behaviour_cloning(policy, expert episodes)             # bc.enabled
    ref     = the warm start (a frozen copy, or the LoRA base)       # algorithm.kl_coef > 0
    for it in iterations:
        rollout, m  = sampler.rollout(it)     # G tasks × n episodes; reward stage; dyn. sampling
        Â           = advantages(rollout)     # the estimator, with the inputs it declares
        m          |= update_policy(policy, rollout, objective, KL, H)
        evaluate every eval.every; checkpoint every save_every (atomic)

The recipe names no algorithm: estimators and losses declare what they need
(:class:`grouprl.train.estimate.AdvantageStage`, :mod:`grouprl.losses.objective`).
Rollouts come from ``rollout.generation_backend`` (:mod:`grouprl.policy.backends`): an engine
that keeps its own copy of the weights is synced after each update, and one whose log-probs are
not the learner's convention gets ``old_logp`` recomputed, its own log-probs reaching the loss
only as ``rollout_logp`` (docs/distributed.md).

Determinism: task seeds of iteration ``it`` are a pure function of ``(seed, it)``; sampling uses
one ``torch.Generator`` saved in every checkpoint, evaluation its own fixed generator. On CPU a
run interrupted after a checkpoint and resumed logs exactly the metrics of an uninterrupted run
(timing metrics aside).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from grouprl.envs.pool import EnvFault
from grouprl.losses.objective import make_objective
from grouprl.policy.backends import (
    engine_logprobs,
    recomputes_old_logp,
    release_memory,
    sync_weights,
)
from grouprl.policy.precision import autocast, compute_dtype
from grouprl.rewards.verifier import close_isolated_verifiers
from grouprl.train.checkpoint import save_checkpoint
from grouprl.train.checks import check_rl_config
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.estimate import AdvantageStage, run_settings
from grouprl.train.evaluate import evaluate_run, make_generate_fn, make_rollout_backend
from grouprl.train.learner import batched_logprobs, update_policy
from grouprl.train.metrics import ProgressBar, read_metrics
from grouprl.train.parallel import (
    ParallelModel,
    any_rank,
    rank_seed,
    reduce_metrics,
    setup_parallel,
    together,
)
from grouprl.train.progress import IterationStatus
from grouprl.train.resume import ResumePoint
from grouprl.train.sampling import Sampler
from grouprl.train.setup import (
    StopRequest,
    TrainResult,
    attach_adapters,
    default_echo,
    make_optimizer,
    prepare_run_dir,
    resolve_device,
    seed_everything,
    step_schedule,
    stop_on_signal,
)
from grouprl.train.task_metrics import category_metrics
from grouprl.train.warm_start import starting_policy

__all__ = ["train_rl"]

COUNTERS = ("skipped_updates", "failed_trajectories", "nonfinite_reward_trajectories",
            "truncated_generations", "truncated_prompts", "empty_batches")
"""Per-iteration counts (``train/<name>``) whose run totals are logged (``train/<name>_total``)."""


def train_rl(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
             echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; returns a summary."""
    comm = setup_parallel(cfg)                        # torchrun: this rank; else one process
    echo = (echo or default_echo) if comm.is_main else (lambda _: None)
    template = check_rl_config(cfg)
    comm.main_first(lambda: prepare_run_dir(cfg, resume, force=force, echo=echo))
    run_dir, a, ro, ev = Path(cfg.run_dir), cfg.algorithm, cfg.rollout, cfg.eval
    seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)
    model, tok, logger = starting_policy(cfg, template, run_dir, device, comm, echo)   # + BC
    model, ref_model, ref_context, routing = attach_adapters(cfg, model, tok, a.kl_coef > 0)
    parallel = ParallelModel(comm, cfg.distributed.model_sharding)
    parallel.prepare(model, ref_model)                 # rank 0's weights, or FSDP2 shards
    optimizer, scheduler = make_optimizer(cfg, model, cfg.iterations)
    sampling = torch.Generator(device=device).manual_seed(rank_seed(cfg.seed, comm.rank))
    generators = {"sampling": sampling, "shuffling": torch.Generator().manual_seed(cfg.seed + 1)}
    backend = make_rollout_backend(cfg, model, tok, generators["sampling"])   # hf | vllm
    generate_fn = make_generate_fn(model, tok, max_new_tokens=ro.max_new_tokens,
                                   temperature=ro.temperature, top_p=ro.top_p,
                                   stop=tuple(ro.stop), backend=backend)
    status, compute = IterationStatus(), compute_dtype(cfg.model.compute_dtype)
    sampler = Sampler(cfg, status.wrap_generate(generate_fn), template, tok, comm,
                      lambda: routing.sampling(sampling))     # PA-MoE: a step router
    advantages = AdvantageStage(cfg, comm, routing)
    objective = make_objective(a.loss, a.loss_options, a.loss_agg,   # engine ℓ → rollout_logp
                               {**run_settings(cfg), "engine_logprobs": engine_logprobs(backend)})
    counters = dict.fromkeys((*COUNTERS, "env_steps", "env_failures"), 0)
    evaluate = partial(evaluate_run, cfg, model, tok, template, comm)   # + step routing
    point = parallel.resume(run_dir, logger, "eval/success_rate", model=model,
                            optimizer=optimizer, scheduler=scheduler, generators=generators,
                            seed=cfg.seed, echo=echo) if resume else ResumePoint()
    start, state = point.iteration, point.state
    sync_weights(backend, model, start)                # an engine's copy = the resumed weights
    counters.update(state.get("counters", {}))
    sampler.load_state_dict(state.get("reward_stage", {}))
    success_before = comm.broadcast(point.before["eval/success_rate"] if point.before else
                                    state.get("success_before"))
    if start == 0 and success_before is None:
        m = {**routing.pretrain(sampler), **evaluate(routing.evaluation())}   # PA-MoE: opt.
        success_before = m["eval/success_rate"]
        logger.log(0, m)
        echo(f"held-out success before RL: {success_before:.1%} "
             f"({ev.episodes} tasks, return {m['eval/episode_return']:.2f})")

    def save(iteration: int) -> None:                  # collective; rank 0 writes
        parallel.save(model, optimizer, generators, lambda **extra: save_checkpoint(
            run_dir, iteration=iteration, model=model, optimizer=optimizer, scheduler=scheduler,
            config=config_to_dict(cfg), generators=generators,
            state={"counters": counters, "success_before": success_before,
                   "reward_stage": sampler.state_dict()},
            keep_last=cfg.keep_last, metrics=logger.lines(), **extra))

    def iteration(it: int) -> dict[str, float]:
        """One RL iteration: rollout → rewards → advantages → update."""
        t0 = time.perf_counter()
        status.start(it)
        routing.set_iteration(it)                              # PA-MoE: router temperature
        with torch.no_grad(), autocast(device, compute):       # forwards only, no step inside
            with parallel.generation(model):                   # FSDP2: one unshard
                m = sampler.refresh_reward_targets(it)         # rewards: the sampler's stage
                rollout, sampled = together(comm, lambda: sampler.rollout(it), (EnvFault,))
            t1 = time.perf_counter()
            rollout.advantages = advantages(rollout, model)
            t2 = time.perf_counter()
            if a.ppo_epochs > 1 or a.num_mini_batches > 1 or recomputes_old_logp(backend):
                rollout.old_logp = batched_logprobs(model, rollout, temperature=ro.temperature,
                                                    micro_batch_size=a.micro_batch_size,
                                                    comm=comm, row_policy=routing)
            if ref_model is not None:
                rollout.ref_logp = batched_logprobs(
                    ref_model, rollout, temperature=ro.temperature,
                    micro_batch_size=a.micro_batch_size, context=ref_context, comm=comm)
        m.update(sampled)
        release_memory(backend)                        # a colocated engine sleeps
        upd = update_policy(model, optimizer, rollout, objective, loss_agg=a.loss_agg,
                            kl_coef=a.kl_coef, kl_kind=a.kl_kind, entropy_coef=a.entropy_coef,
                            ppo_epochs=a.ppo_epochs, num_mini_batches=a.num_mini_batches,
                            micro_batch_size=a.micro_batch_size, grad_clip=cfg.optim.grad_clip,
                            temperature=ro.temperature, generator=generators["shuffling"],
                            autocast_dtype=compute, on_micro_batch=status.micro_batch,
                            comm=comm, row_policy=routing)
        sync_weights(backend, model, it + 1)           # an engine's copy = the new weights
        t3 = time.perf_counter()
        out = {f"train/{k}": float(v) for k, v in rollout.metrics.items()}
        out.update(m)
        out.update(advantages.metrics(rollout, rollout.advantages))
        out.update(category_metrics(rollout, "train"))         # multi-task: per category
        out.update({"timing/rollout_s": t1 - t0, "timing/advantage_s": t2 - t1,
                    "timing/update_s": t3 - t2, "timing/iteration_s": t3 - t0})
        return {**reduce_metrics(out, comm), **upd}    # every rank's rows; upd is global

    bar = status.bar = ProgressBar(cfg.iterations, desc="RL", initial=start,
                                   enabled=cfg.logging.progress and comm.is_main)
    last_success, stop = success_before, StopRequest()
    try:
        with stop_on_signal(stop):
            for it in range(start, cfg.iterations):
                try:
                    metrics = iteration(it)
                except EnvFault as err:           # over the fault budget: keep what is done
                    save(it)
                    echo(f"iteration {it + 1} abandoned: {err}\ncheckpoint of iteration {it} "
                         f"saved; fix the env or raise env.max_failed_fraction, then: grouprl "
                         f"train --resume {run_dir}")
                    raise
                step_schedule(scheduler)
                for k in COUNTERS:
                    counters[k] += int(metrics.get(f"train/{k}", 0))
                counters["env_steps"] += int(metrics.get("train/rows", 0))
                metrics.update({f"train/{k}_total": float(counters[k])
                                for k in (*COUNTERS, "env_steps")})
                counters["env_failures"] += int(metrics.get("env/failures", 0))
                metrics["env/failures_total"] = float(counters["env_failures"])
                done = it + 1
                if (ev.every and done % ev.every == 0) or done == cfg.iterations:
                    metrics.update(evaluate(routing.evaluation()))
                    last_success = metrics["eval/success_rate"]
                logger.log(done, metrics)
                bar.update(done, success=metrics["train/success_rate"],
                           eval=last_success if last_success is not None else float("nan"))
                stopping = any_rank(comm, stop.requested)     # a signal reached some rank
                if stopping or (cfg.save_every and done % cfg.save_every == 0) \
                        or done == cfg.iterations:
                    save(done)
                if stopping:
                    echo(f"stopped after iteration {done}; checkpoint saved — continue "
                         f"with: grouprl train --resume {run_dir}")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        sampler.close()
        logger.close()
        close_isolated_verifiers()
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("eval/success_rate") is not None]
    after = evals[-1]["eval/success_rate"] if evals else None
    if after is not None and success_before is not None:
        echo(f"held-out success: before RL {success_before:.1%} → after RL {after:.1%} "
             f"({cfg.iterations} iterations of {a.estimator})")
    return TrainResult(run_dir, cfg.iterations, success_before, after, rows)
