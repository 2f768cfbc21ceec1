"""The tool-planning recipe (``mode: phgpo``; PhGPO, Li et al., arXiv 2602.13691; spec §2.7):
a tool-head policy learns to pick the next tool, guided by a pheromone learned from its own
successful tool transitions. Each iteration is one epoch of a stage (:mod:`grouprl.train`)::

    data    = phgpo.task's tasks (synthetic graph | BFCL multi-turn), split by task
    policy  = model.* LM (tiny model on the states, or model.path) + LoRA + linear tool head
    for (stage, e) in epoch_plan:                      # stage 1 | 2 (curriculum) | 3
        settings = β, λ, ε, teacher forcing, w_sl, horizon of (stage, e)
        stage 1: next-tool CE on the reference states
        else:    begin_epoch (stage 3: protect golden edges, warm up);  for each task:
                 G rollouts (q ∝ p·τ^β) → GRPO advantages → CE + PPO-clip − H → deposits
                 end_epoch (stage 3: inject elites)
        metrics; held-out eval (β = 0 and β > 0) every eval.every; checkpoint every save_every

Checkpoints (atomic, checksummed; :mod:`grouprl.train.checkpoint`) hold the policy (LM, LoRA,
head), the optimizer, the LR schedule, every RNG (the sampling ``torch.Generator`` and the
shuffling ``random.Random``), and as state the pheromone store and the elite buffer, so on CPU a
resumed run logs exactly the metrics of an uninterrupted one (timing metrics aside).

Data parallel under ``torchrun`` (docs/distributed.md; :mod:`grouprl.train.tool_learner`): the
policy is replicated (rank 0's weights), every rank draws the same epoch plan and tasks and runs
them in rounds of W tasks (one optimizer step per round, gradients all-reduced with the round's
global step count), every rank applies every rank's deposits in task order (so every rank holds
the identical pheromone store and elite buffer), evaluation is sharded; rank 0 logs and writes
the checkpoints (plus every rank's sampling stream), and a resume with the same world size is
exact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from grouprl.phgpo import EliteBuffer, PheromoneStore, RewardConfig
from grouprl.phgpo.context import ContextConfig
from grouprl.phgpo.transition import PheromoneConfig
from grouprl.train.checkpoint import save_checkpoint
from grouprl.train.checks import check_phgpo_config
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict
from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics
from grouprl.train.parallel import NullLogger, ParallelModel, any_rank, rank_seed, setup_parallel
from grouprl.train.resume import ResumePoint
from grouprl.train.setup import (
    StopRequest,
    TrainResult,
    default_echo,
    make_optimizer,
    prepare_run_dir,
    resolve_device,
    seed_everything,
    step_schedule,
    stop_on_signal,
)
from grouprl.train.tool_data import build_tool_policy, load_tool_data
from grouprl.train.tool_learner import ToolLearner
from grouprl.train.tool_stages import (
    begin_epoch,
    end_epoch,
    epoch_plan,
    epoch_settings,
    epoch_tasks,
    store_stats,
    to_plain,
    to_tensors,
)

__all__ = ["train_phgpo"]

SCORE = "eval/match_rate"


def train_phgpo(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
                echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; ``iterations`` of the result are epochs and
    ``success_before`` / ``success_after`` the held-out match rate with the pheromone."""
    comm = setup_parallel(cfg)                        # torchrun: this rank; else one process
    echo = (echo or default_echo) if comm.is_main else (lambda _: None)
    pc = cfg.phgpo
    check_phgpo_config(cfg)
    if comm.distributed and cfg.distributed.model_sharding != "replicated":
        raise ConfigError("distributed.model_sharding: the phgpo recipe replicates its policy; "
                          "set distributed.model_sharding=replicated")
    data = load_tool_data(cfg)                                # a data error before any write
    comm.main_first(lambda: prepare_run_dir(cfg, resume, force=force, echo=echo))
    run_dir, plan = Path(cfg.run_dir), epoch_plan(pc)
    seed_everything(cfg.seed)
    policy, tok = comm.main_first(lambda: build_tool_policy(cfg, run_dir, data, echo))
    policy.to(resolve_device(cfg.model.device))
    parallel = ParallelModel(comm, "replicated")
    parallel.prepare(policy)                          # rank 0's weights on every rank
    optimizer, scheduler = make_optimizer(cfg, policy, len(plan))
    store = PheromoneStore(len(data.tool_names), data.num_variants,
                           scalar=PheromoneConfig(**pc.pheromone),
                           context=ContextConfig(**pc.context), use_context=pc.use_context,
                           context_write=pc.context_write)
    elite = EliteBuffer()
    learner = ToolLearner(pc, policy, tok, optimizer, data, store, elite,
                          RewardConfig(**pc.rewards), grad_clip=cfg.optim.grad_clip,
                          eval_tasks=cfg.eval.episodes, seed=cfg.seed, comm=comm)
    generators = {"sampling": torch.Generator().manual_seed(rank_seed(cfg.seed, comm.rank)),
                  "shuffling": random.Random(cfg.seed + 1)}
    logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg)) \
        if comm.is_main else NullLogger()
    point = parallel.resume(run_dir, logger, SCORE, model=policy, optimizer=optimizer,
                            scheduler=scheduler, generators=generators, seed=cfg.seed,
                            echo=echo) if resume else ResumePoint()
    if point.state:
        store.load_state_dict(to_tensors(point.state["store"]))
        elite.load_state_dict(point.state["elite"])
    before = comm.broadcast(point.before[SCORE] if point.before else point.state.get("before"))
    if point.iteration == 0 and before is None:
        m = learner.evaluate()
        before = m[SCORE]
        logger.log(0, {**m, **store_stats(store, elite)})
        echo(f"held-out match rate before training: {before:.1%} (β = 0: "
             f"{m['eval/match_rate_beta0']:.1%}, uniform {m['eval/uniform_match_rate']:.1%})")

    def save(done: int) -> None:                      # collective; rank 0 writes
        parallel.save(policy, optimizer, generators, lambda **extra: save_checkpoint(
            run_dir, iteration=done, model=policy, optimizer=optimizer, scheduler=scheduler,
            config=config_to_dict(cfg), generators=generators,
            state={"store": to_plain(store.state_dict()), "elite": elite.state_dict(),
                   "before": before},
            keep_last=cfg.keep_last, metrics=logger.lines(), **extra))

    bar = ProgressBar(len(plan), desc="PhGPO", initial=point.iteration,
                      enabled=cfg.logging.progress and comm.is_main)
    stop = StopRequest()
    try:
        with stop_on_signal(stop):
            for index in range(point.iteration, len(plan)):
                t0 = time.perf_counter()
                settings = epoch_settings(pc, *plan[index], elite)
                if settings.stage == 1:
                    m = learner.supervised_epoch(settings, generators["shuffling"])
                else:
                    m = begin_epoch(settings, store, elite)
                    tasks = epoch_tasks(pc, data.train, settings, elite, generators["shuffling"])
                    m.update(learner.rl_epoch(tasks, settings, generators["sampling"]))
                    end_epoch(pc, settings, store, elite)
                step_schedule(scheduler)
                done = index + 1
                m.update({"stage": settings.stage, "schedule/beta": settings.beta,
                          "schedule/lambda": settings.lam, "schedule/epsilon": settings.epsilon,
                          "schedule/teacher_forcing": settings.teacher_forcing,
                          "schedule/sl_weight": settings.sl_weight,
                          "schedule/horizon": settings.horizon, **store_stats(store, elite)})
                if (cfg.eval.every and done % cfg.eval.every == 0) or done == len(plan):
                    m.update(learner.evaluate())
                m["timing/epoch_s"] = time.perf_counter() - t0
                logger.log(done, m)
                bar.update(done, stage=settings.stage, match=m.get("train/match_rate", 0.0))
                stopping = any_rank(comm, stop.requested)     # a signal reached some rank
                if stopping or (cfg.save_every and done % cfg.save_every == 0) \
                        or done == len(plan):
                    save(done)
                if stopping:
                    echo(f"stopped after epoch {done}; checkpoint saved — continue with: "
                         f"grouprl train --resume {run_dir}")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        logger.close()
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get(SCORE) is not None]
    after = evals[-1][SCORE] if evals else None
    if after is not None and before is not None:
        echo(f"held-out match rate: before {before:.1%} → after {after:.1%} ({len(plan)} epochs)")
    return TrainResult(run_dir, len(plan), before, after, rows)
