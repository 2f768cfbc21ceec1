"""Warm starts of the recipes, saved once in the run directory so resume and studies reuse them.

- RL: the tiny model's tokenizer corpus (the env's expert episodes, its special tokens and
  grid symbols), then behaviour cloning on expert episodes (``bc.*``) → ``run_dir/warm_start``.
- Preference: the tiny model's corpus (the pairs' text), then SFT on the chosen responses
  (``preference.sft_epochs``) → ``run_dir/warm_start``, which is also the reference model.

A warm start is written atomically with a checksum manifest and a record of the config keys that
determine it (:mod:`grouprl.train.saved_model`); ``load_or_build_policy`` verifies it before it
is reused, so here an existing one is simply kept.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from grouprl.agent.prompts import PromptTemplate, apply_chat_template
from grouprl.distributed import Comm
from grouprl.envs import make_env
from grouprl.envs.registry import resolve_factory
from grouprl.train.bc import ExpertSample, clone_behaviour, expert_samples
from grouprl.train.checks import check_resources
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.metrics import MetricsLogger
from grouprl.train.parallel import NullLogger
from grouprl.train.sampling import task_seeds
from grouprl.train.saved_model import has_saved_model, model_dir_record, save_model_dir_atomically
from grouprl.train.setup import WARM_START_DIR, TinyCorpus, load_or_build_policy

__all__ = ["env_corpus", "behaviour_cloning", "pairs_corpus", "sft_on_chosen",
           "TINY_SPECIAL_TOKENS", "TINY_ISOLATE_CHARS"]

TINY_SPECIAL_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TINY_ISOLATE_CHARS = "0123456789"


def env_corpus(cfg: TrainConfig, template: PromptTemplate) -> TinyCorpus:
    """Prompts and replies of ``model.tiny.tokenizer_episodes`` expert episodes, the action tags
    and the env's special tokens; isolated chars = the env's grid symbols."""
    samples = expert_samples(cfg.env.name, cfg.env.kwargs,
                             task_seeds(cfg.seed, -1, cfg.model.tiny.tokenizer_episodes,
                                        cfg.eval.seed_offset),
                             template=template, history_length=cfg.agent.history_length,
                             max_steps=cfg.env.max_steps, action_tag=cfg.agent.action_tag,
                             tokenizer=None, use_chat_template=False,
                             backend=cfg.env.backend, step_timeout=cfg.env.step_timeout,
                             num_workers=cfg.env.num_workers)
    if samples.failed_episodes:
        warnings.warn(f"tokenizer corpus: {samples.failed_episodes} expert episodes failed "
                      f"(env exception, crash or hang) and were left out; first: "
                      f"{samples.errors[0]}", RuntimeWarning, stacklevel=2)
    tag = cfg.agent.action_tag
    specials: tuple[str, ...] = (f"<{tag}>", f"</{tag}>") if tag else ()
    source, probe = _tokenizer_hints(cfg)
    try:
        specials += tuple(x for x in getattr(source, "special_tokens", ()) if x not in specials)
        isolate = getattr(source, "isolate_chars", None) or getattr(source, "grid_symbols", "") \
            or ""
    finally:
        if probe is not None:
            probe.close()
    return TinyCorpus([s.prompt for s in samples] + [s.response for s in samples], specials,
                      isolate, cfg.env.name)


def _tokenizer_hints(cfg: TrainConfig) -> tuple[Any, Any]:
    """``(source, probe)``: where to read the env's ``special_tokens`` / ``isolate_chars`` /
    ``grid_symbols`` — its class when the registered factory is one (nothing is built in this
    process), else an instance ``probe`` built here (to close after reading)."""
    factory = resolve_factory(cfg.env.name)
    if isinstance(factory, type):
        return factory, None
    probe = make_env(cfg.env.name, **cfg.env.kwargs)
    return probe, probe


def behaviour_cloning(cfg: TrainConfig, model: torch.nn.Module, tok: Any,
                      template: PromptTemplate, run_dir: Path, logger: MetricsLogger,
                      echo: Callable[[str], None]) -> None:
    """Clone the env's expert (``bc.*``) unless the run already has its warm start; save it."""
    warm = run_dir / WARM_START_DIR
    if not cfg.bc.enabled or has_saved_model(warm):  # verified when it was loaded
        return
    b = cfg.bc
    t0 = time.perf_counter()
    samples = expert_samples(cfg.env.name, cfg.env.kwargs,
                             task_seeds(cfg.seed, -2, b.episodes, cfg.eval.seed_offset),
                             template=template, history_length=cfg.agent.history_length,
                             max_steps=cfg.env.max_steps, action_tag=cfg.agent.action_tag,
                             tokenizer=tok, use_chat_template=cfg.agent.use_chat_template,
                             backend=cfg.env.backend, step_timeout=cfg.env.step_timeout,
                             num_workers=cfg.env.num_workers)
    failed = samples.failed_episodes
    echo(f"behaviour cloning on {len(samples)} expert steps from {b.episodes} episodes"
         + (f" ({failed} failed and dropped; first: {samples.errors[0]})" if failed else ""))
    losses = clone_behaviour(model, tok, samples, epochs=b.epochs, batch_size=b.batch_size,
                             lr=b.lr, max_updates=b.max_updates, seed=cfg.seed)
    save_model_dir_atomically(model, tok, warm, model_dir_record(cfg, WARM_START_DIR))
    echo(f"behaviour cloning: {len(losses)} updates, loss {losses[0]:.3f} → "
         f"{losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s)")
    logger.log(0, {"bc/loss_first": losses[0], "bc/loss_last": losses[-1],
                   "bc/updates": float(len(losses)), "bc/samples": float(len(samples)),
                   "bc/failed_episodes": float(failed), "timing/bc_s": time.perf_counter() - t0})


def pairs_corpus(cfg: TrainConfig, pairs: Sequence[Any]) -> TinyCorpus:
    """Prompts, chosen and rejected responses of the training pairs."""
    return TinyCorpus([x for p in pairs for x in (p.prompt, p.chosen, p.rejected)],
                      TINY_SPECIAL_TOKENS, TINY_ISOLATE_CHARS, cfg.preference.dataset)


def sft_on_chosen(cfg: TrainConfig, model: torch.nn.Module, tok: Any, pairs: Sequence[Any],
                  run_dir: Path, logger: MetricsLogger, echo: Callable[[str], None]) -> None:
    """Tiny model only: SFT on the chosen responses (``preference.sft_epochs``), saved as the
    run's warm start (= the reference model) unless it exists."""
    warm = run_dir / WARM_START_DIR
    epochs = cfg.preference.sft_epochs
    if cfg.model.path is not None:
        if epochs > 0:
            echo(f"model.path is set: no SFT warm start (preference.sft_epochs={epochs} applies "
                 "to the tiny model only); the reference is the model as loaded")
        return
    if epochs == 0 or has_saved_model(warm):  # verified when it was loaded
        return
    b = cfg.bc
    templated = cfg.agent.use_chat_template and getattr(tok, "chat_template", None)
    eos = tok.eos_token or ""
    samples = [ExpertSample(apply_chat_template(tok, p.prompt) if templated else p.prompt,
                            p.chosen + eos) for p in pairs]
    t0 = time.perf_counter()
    losses = clone_behaviour(model, tok, samples, epochs=epochs, batch_size=b.batch_size,
                             lr=b.lr, max_updates=b.max_updates, seed=cfg.seed)
    save_model_dir_atomically(model, tok, warm, model_dir_record(cfg, WARM_START_DIR))
    echo(f"SFT on {len(samples)} chosen responses: {len(losses)} updates, loss "
         f"{losses[0]:.3f} → {losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s); this warm "
         "start is the reference model")
    logger.log(0, {"sft/loss_first": losses[0], "sft/loss_last": losses[-1],
                   "sft/updates": float(len(losses)), "timing/sft_s": time.perf_counter() - t0})


def starting_policy(cfg: TrainConfig, template: PromptTemplate, run_dir: Path,
                    device: torch.device, comm: Comm,
                    echo: Callable[[str], None]) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, tokenizer, logger)`` an RL run starts from: the saved warm start, else
    ``model.path`` or the tiny model (built and saved), behaviour-cloned when ``bc.enabled``
    (saved); checked against the rollout's memory needs. The metrics logger is rank 0's
    (:class:`~grouprl.train.parallel.NullLogger` elsewhere). Data parallel: rank 0 builds and
    saves first, the other ranks then load what it saved (:meth:`Comm.main_first`)."""

    def build() -> tuple[torch.nn.Module, Any, Any]:
        model, tok = load_or_build_policy(cfg, run_dir, lambda: env_corpus(cfg, template), echo)
        model.to(device)
        check_resources(cfg, model, tok, template)   # refuse a rollout that cannot fit memory
        logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard,
                               wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                               config=config_to_dict(cfg)) if comm.is_main else NullLogger()
        behaviour_cloning(cfg, model, tok, template, run_dir, logger, echo)
        return model, tok, logger

    return comm.main_first(build)
