"""The multi-agent recipe (Dr. MAS, arXiv 2602.08847; ``mode: multiagent``): a team of agents,
one policy + optimizer per model group, advantages on the combined batch, independent updates::

    team     = agents, orchestra, model groups, tasks, advantage options   (multiagent.*)
    policies = per group: a local model (multiagent.models.<m>.path) or a tiny model (+ SFT)
    for it in iterations:
        rows, records = team rollout of G tasks × n episodes    (one row per agent invocation)
        Â             = team advantages(rows, episodes)         (combined batch; by agent,
                                                                  trajectory or step baseline)
        per group g:    update_policy(model_g, optimizer_g, rows of g, Â, update_num steps)
        log agent/<name>/*; val/pass@k, val/avg@k every eval.every; checkpoint (every group)

Determinism: task seeds are a pure function of ``(seed, it)``; every model group samples with its
own ``torch.Generator`` and mini-batches are shuffled with one more, all saved in each checkpoint
with every group's weights, optimizer and LR schedule, so on CPU a resumed run logs exactly the
metrics of an uninterrupted one (timing metrics aside). The recipe names no algorithm.

Data parallel under ``torchrun`` (docs/distributed.md): every rank draws the same task seeds and
rolls out its contiguous block of whole tasks (group ids global) with its own sampling streams
(rank 0's are the one-process ones); advantages are per task group, so local (the reference
padding is computed on every rank's rows); each group's update takes its step count from the
global row count and runs ``update_policy(..., comm)``; every group's weights are rank 0's at
the start; evaluation is sharded and reduced; metrics are reduced; rank 0 logs and writes the
checkpoints (plus every rank's RNG), and a resume with the same world size is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from grouprl.distributed import shard_bounds
from grouprl.train.checkpoint import save_checkpoint
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics
from grouprl.train.parallel import (
    NullLogger,
    ParallelModel,
    any_rank,
    rank_seed,
    restore_rank_rng,
    setup_parallel,
)
from grouprl.train.resume import ResumePoint, resume_run
from grouprl.train.sampling import task_seeds
from grouprl.train.setup import (
    StopRequest,
    TrainResult,
    default_echo,
    prepare_run_dir,
    resolve_device,
    seed_everything,
    step_schedule,
    stop_on_signal,
)
from grouprl.train.team_checks import check_multiagent_config
from grouprl.train.team_models import load_team_policies, make_team_optimizers
from grouprl.train.team_rollout import TeamGenerator, evaluate_team, team_rollout
from grouprl.train.team_update import (
    advantages_of,
    metric_weights,
    reduce_team_metrics,
    team_metrics,
    team_objectives,
    update_groups,
)

__all__ = ["train_multiagent"]

SCORE = "val/avg@k"


def train_multiagent(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
                     echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; returns a summary (success = ``val/avg@k``)."""
    comm = setup_parallel(cfg)                        # torchrun: this rank; else one process
    echo = (echo or default_echo) if comm.is_main else (lambda _: None)
    team = check_multiagent_config(cfg)
    comm.main_first(lambda: prepare_run_dir(cfg, resume, force=force, echo=echo))
    run_dir, ro, ev = Path(cfg.run_dir), cfg.rollout, cfg.eval
    seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)
    policies = comm.main_first(lambda: load_team_policies(cfg, team, run_dir, echo))
    team_model = torch.nn.ModuleDict({g: m for g, (m, _) in policies.items()}).to(device)
    parallel = ParallelModel(comm, "replicated")
    parallel.prepare(team_model)                      # every group: rank 0's weights
    optimizer, scheduler = make_team_optimizers(cfg, team, policies)
    objectives = team_objectives(cfg, team)
    sampling = {f"sampling/{g}": torch.Generator(device=device).manual_seed(
                    rank_seed(cfg.seed, comm.rank) + k) for k, g in enumerate(policies)}
    generators = {**sampling, "shuffling": torch.Generator().manual_seed(cfg.seed + len(policies))}
    generate = TeamGenerator(cfg, team, policies, {g: generators[f"sampling/{g}"]
                                                   for g in policies})
    logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg)) \
        if comm.is_main else NullLogger()
    point = resume_run(run_dir, logger, SCORE, model=team_model, optimizer=optimizer,
                       scheduler=scheduler, generators=generators, echo=echo) \
        if resume else ResumePoint()
    start, state = point.iteration, point.state
    if point.state:                                   # rank r > 0: its own sampling streams
        restore_rank_rng(comm, point.rank_rng, sampling, seed=cfg.seed,
                         iteration=start, echo=default_echo)
    before = comm.broadcast(point.before[SCORE] if point.before else state.get("before"))
    if start == 0 and before is None:
        m = evaluate_team(cfg, team, policies, comm)
        before = m[SCORE]
        logger.log(0, m)
        echo(f"held-out before training: avg@{ma_k(cfg)} {before:.1%}, pass@{ma_k(cfg)} "
             f"{m['val/pass@k']:.1%} ({ev.episodes} tasks)")
    lo, hi = shard_bounds(ro.groups_per_batch, comm.world_size, comm.rank)

    def iteration(it: int) -> dict[str, float]:
        """One team iteration: rollout → advantages (combined batch) → per-group updates."""
        t0 = time.perf_counter()
        seeds = task_seeds(cfg.seed, it, ro.groups_per_batch, ev.seed_offset)[lo:hi]
        roll, records = team_rollout(team, generate, seeds, ro.group_size, first_group=lo)
        t1 = time.perf_counter()
        res = advantages_of(team, roll.rows, roll.episodes, it, comm)
        updates = update_groups(cfg, team, policies, optimizer, objectives, res, roll.rows,
                                records, roll.episodes, generators["shuffling"], comm)
        t2 = time.perf_counter()
        out = team_metrics(team, roll.rows, roll.episodes, res, updates)
        out.update({"timing/rollout_s": t1 - t0, "timing/update_s": t2 - t1,
                    "timing/iteration_s": t2 - t0})
        return reduce_team_metrics(out, metric_weights(team, roll.rows, roll.episodes, res),
                                   comm)

    def save(done: int) -> None:                      # collective; rank 0 writes
        parallel.save(team_model, optimizer, generators, lambda **extra: save_checkpoint(
            run_dir, iteration=done, model=team_model, optimizer=optimizer,
            scheduler=scheduler, config=config_to_dict(cfg), generators=generators,
            state={"before": before}, keep_last=cfg.keep_last, metrics=logger.lines(),
            **extra))

    bar = ProgressBar(cfg.iterations, desc="team", initial=start,
                      enabled=cfg.logging.progress and comm.is_main)
    stop = StopRequest()
    try:
        with stop_on_signal(stop):
            for it in range(start, cfg.iterations):
                metrics = iteration(it)
                step_schedule(scheduler)
                done = it + 1
                if (ev.every and done % ev.every == 0) or done == cfg.iterations:
                    metrics.update(evaluate_team(cfg, team, policies, comm))
                logger.log(done, metrics)
                bar.update(done, success=metrics["train/success_rate"])
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
        logger.close()
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get(SCORE) is not None]
    after = evals[-1][SCORE] if evals else None
    if after is not None and before is not None:
        echo(f"held-out avg@{ma_k(cfg)}: before {before:.1%} → after {after:.1%} "
             f"({cfg.iterations} iterations, {len(team.groups.groups)} model groups)")
    return TrainResult(run_dir, cfg.iterations, before, after, rows)


def ma_k(cfg: TrainConfig) -> int:
    """k of the held-out pass@k / avg@k."""
    return cfg.multiagent.eval_k
