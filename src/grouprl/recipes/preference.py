"""Offline pairwise preference training (DPO, cDPO, rDPO, IPO, SimPO, ORPO, HyPO): the recipe.

The recipe (one screen, nanoGPT style) — :func:`train_preference`::

    pairs  = load_pairs(preference.dataset)  (+ held-out pairs)               (grouprl.data)
    policy = model.path (+ LoRA)  |  tiny model built on the pairs' text, then SFT on (x, y_w)
    ref    = the policy as it starts (the SFT warm start, the loaded model, or the LoRA base):
             Λ^ref(y_w), Λ^ref(y_l) computed ONCE, cached in run_dir/reference_logprobs.*
    for step in range(epochs · ⌈N / batch_size⌉):                 (pairs reshuffled per epoch)
        Λ^θ(y_w), Λ^θ(y_l)  = summed response log-probs; chosen and rejected in one forward
        loss, m = preference_loss(loss, Λ^θ_w, Λ^θ_l, Λ^ref_w, Λ^ref_l, **loss_options)
        backward per micro-batch, weighted by its share of the batch; clip; AdamW; LR schedule
        held-out eval every eval_every (and at step 0 and the end); checkpoint every save_every

Components: :mod:`grouprl.train.pair_data` (tokenised pairs, config checks, data),
:mod:`grouprl.train.pairs` (log-probs, reference cache, loss plumbing, evaluation).

Determinism: the pair order of epoch ``e`` comes from one seeded ``torch.Generator`` whose
state at the start of the current epoch is saved in every checkpoint, so on CPU a run
interrupted after a checkpoint and resumed logs exactly the metrics of an uninterrupted run
(timing metrics aside).

Data parallel (``torchrun``, docs/distributed.md): every rank loads and tokenises all pairs and
draws the same pair order; rank 0 prepares the run directory and builds (and SFTs) the policy,
the others then load what it saved, and rank 0's weights are broadcast (again after LoRA, whose
adapters start random). Each step shards its batch over the ranks (global normalisers, gradients
all-reduced before clipping; :mod:`grouprl.train.pairs`); the reference log-probs and the
evaluation forwards are sharded and gathered; rank 0 logs and writes the checkpoints (the
one-process format plus every rank's RNG), every rank resumes from them. The model is
replicated (``distributed.model_sharding: fsdp2`` is refused).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from grouprl.distributed import init_distributed
from grouprl.losses.preference import PREFERENCE_LOSSES
from grouprl.train.checkpoint import save_checkpoint
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics
from grouprl.train.pair_data import (
    load_preference_data,
    tokenize_preference_pairs,
    validate_preference_config,
)
from grouprl.train.pairs import (
    REFERENCE_FILE,
    cached_reference_logps,
    check_same_pairs,
    evaluate_pairs,
    pessimistic_pairs,
    preference_step,
    slowest,
)
from grouprl.train.parallel import NullLogger, ParallelModel, any_rank
from grouprl.train.resume import ResumePoint
from grouprl.train.setup import (
    StopRequest,
    TrainResult,
    apply_lora_config,
    default_echo,
    load_or_build_policy,
    make_optimizer,
    prepare_run_dir,
    resolve_device,
    seed_everything,
    step_schedule,
    stop_on_signal,
)
from grouprl.train.warm_start import pairs_corpus, sft_on_chosen

__all__ = ["train_preference"]


def train_preference(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
                     echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; returns a ``grouprl.train.TrainResult`` whose
    ``iterations`` are optimizer steps and ``success_before`` / ``success_after`` the held-out
    reward accuracy at step 0 and at the end."""
    pc = cfg.preference
    loss = validate_preference_config(cfg)
    comm = init_distributed(cfg.model.device, timeout_s=cfg.distributed.timeout_s)
    echo = (echo or default_echo) if comm.is_main else (lambda _: None)
    train_pairs, eval_pairs = load_preference_data(cfg)      # a bad file fails before any write
    comm.main_first(lambda: prepare_run_dir(cfg, resume, force=force, echo=echo))
    comm.barrier()                        # every rank checked run_dir before rank 0 writes to it
    run_dir = Path(cfg.run_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)

    # ---- data, policy (= reference), tokenised pairs, reference log-probs (cached)
    def build() -> tuple:                 # rank 0 first; the others load what it saved
        logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard,
                               wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                               config=config_to_dict(cfg)) if comm.is_main else NullLogger()
        model, tok = load_or_build_policy(cfg, run_dir, lambda: pairs_corpus(cfg, train_pairs),
                                          echo, cast_tiny=True)
        model.to(device)
        sft_on_chosen(cfg, model, tok, train_pairs, run_dir, logger, echo)
        return logger, model, tok

    logger, model, tok = comm.main_first(build)
    parallel = ParallelModel(comm, "replicated")
    parallel.prepare(model)                           # rank 0's weights on every rank
    tokenize = lambda ps: tokenize_preference_pairs(  # noqa: E731
        tok, ps, max_length=pc.max_length, use_chat_template=cfg.agent.use_chat_template)
    train_data = tokenize(train_pairs)
    eval_name = "held-out"
    if not eval_pairs:
        eval_pairs, eval_name = train_pairs, "training"
        echo("no held-out pairs (preference.eval_fraction=0): evaluating on the training pairs")
    eval_data = tokenize(eval_pairs)
    check_same_pairs({"train": train_data, "eval": eval_data}, comm)
    opts = dict(pc.loss_options)
    ref_train = ref_eval = pess_train = None
    if PREFERENCE_LOSSES[loss].needs_ref:
        ref = cached_reference_logps(model, {"train": train_data, "eval": eval_data},
                                     run_dir / REFERENCE_FILE,
                                     micro_batch_size=pc.micro_batch_size, echo=echo,
                                     comm=comm)
        ref_train, ref_eval = ref["train"], ref["eval"]
        pess_train = pessimistic_pairs(loss, opts, train_data, ref_train)

    # ---- LoRA (reference = the base: its log-probs are already computed), optimizer
    model = apply_lora_config(cfg, model)
    if cfg.model.lora.enabled:
        parallel.prepare(model)                       # the adapters' random init: rank 0's
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(train_data)
    steps_per_epoch = math.ceil(n / pc.batch_size)
    total = pc.epochs * steps_per_epoch
    optimizer, scheduler = make_optimizer(cfg, model, total)
    shuffling = torch.Generator().manual_seed(cfg.seed + 1)
    counters = {"skipped_updates": 0}

    def run_eval() -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate_pairs(model, eval_data, ref_eval, loss=loss, loss_options=opts,
                           micro_batch_size=pc.micro_batch_size, comm=comm)
        m["timing/eval_s"] = slowest(time.perf_counter() - t0, comm)
        return m

    point = parallel.resume(run_dir, logger, "eval/reward_accuracy", model=model,
                            optimizer=optimizer, scheduler=scheduler,
                            generators={"shuffling": shuffling}, seed=cfg.seed, echo=echo) \
        if resume else ResumePoint()
    start, state = point.iteration, point.state
    counters.update(state.get("counters", {}))
    before, logp_before = state.get("success_before"), state.get("logp_accuracy_before")
    if point.before:              # stopped before the first checkpoint: keep the step-0 rows
        before = point.before["eval/reward_accuracy"]
        logp_before = point.before.get("eval/logp_accuracy")
    before, logp_before = comm.broadcast((before, logp_before))     # rank 0 read the metrics
    if start == 0 and before is None:
        m = run_eval()
        before, logp_before = m["eval/reward_accuracy"], m["eval/logp_accuracy"]
        logger.log(0, m)
        echo(f"{eval_name} reward accuracy before {loss}: {before:.1%} ({len(eval_data)} pairs; "
             f"policy prefers the chosen response by log-prob on {logp_before:.1%})")

    def save(step: int, generator_state: torch.Tensor) -> None:    # collective; rank 0 writes
        g = torch.Generator()
        g.set_state(generator_state)
        parallel.save(model, optimizer, {"shuffling": g}, lambda **extra: save_checkpoint(
            run_dir, iteration=step, model=model, optimizer=optimizer, scheduler=scheduler,
            config=config_to_dict(cfg), generators={"shuffling": g}, keep_last=cfg.keep_last,
            metrics=logger.lines(), state={"counters": counters, "success_before": before,
                                           "logp_accuracy_before": logp_before}, **extra))

    bar = ProgressBar(total, desc=loss, initial=start,
                      enabled=cfg.logging.progress and comm.is_main)
    stop = StopRequest()
    step = start
    last_acc = before
    model.train()
    try:
        with stop_on_signal(stop):
            while step < total:
                epoch_state = shuffling.get_state()  # saved mid-epoch: the order is redrawn
                perm = torch.randperm(n, generator=shuffling)
                for pos in range(step % steps_per_epoch, steps_per_epoch):
                    idx = perm[pos * pc.batch_size:(pos + 1) * pc.batch_size]
                    metrics = preference_step(model, optimizer, params, train_data, idx,
                                              ref_train, loss, opts, pc.micro_batch_size,
                                              cfg.optim.grad_clip, comm=comm)
                    step_schedule(scheduler)
                    step += 1
                    counters["skipped_updates"] += int(metrics["train/skipped_updates"])
                    metrics["train/skipped_updates_total"] = float(counters["skipped_updates"])
                    metrics["train/epoch"] = step / steps_per_epoch
                    if pess_train is not None:
                        metrics["pref/pessimistic_frac"] = float(pess_train[idx].float().mean())
                    if (pc.eval_every and step % pc.eval_every == 0) or step == total:
                        metrics.update(run_eval())
                        last_acc = metrics["eval/reward_accuracy"]
                        model.train()
                    logger.log(step, metrics)
                    bar.update(step, loss=metrics.get("pref/loss", float("nan")),
                               acc=metrics.get("pref/reward_accuracy", float("nan")),
                               eval=last_acc)
                    stopping = any_rank(comm, stop.requested)   # a signal reached some rank
                    if stopping or (cfg.save_every and step % cfg.save_every == 0) \
                            or step == total:
                        save(step, epoch_state if step % steps_per_epoch else
                             shuffling.get_state())
                    if stopping:
                        echo(f"stopped after step {step}; checkpoint saved — continue with: "
                             f"grouprl train --resume {run_dir}")
                        raise KeyboardInterrupt
    finally:
        bar.close()
        logger.close()
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("eval/reward_accuracy") is not None]
    after = evals[-1]["eval/reward_accuracy"] if evals else None
    if after is not None and before is not None:
        logp_after = evals[-1].get("eval/logp_accuracy")
        echo(f"{eval_name} reward accuracy: before {before:.1%} → after {after:.1%} ({total} "
             f"steps of {loss}); policy prefers the chosen response by log-prob: "
             f"{logp_before:.1%} → {logp_after:.1%}")
    return TrainResult(run_dir, total, before, after, rows)

