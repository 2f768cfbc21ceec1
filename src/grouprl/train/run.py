"""Opening a saved run: its resolved config (plus overrides) to resume or to evaluate it, and its
trained policy."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from grouprl.agent.prompts import PromptTemplate, template_from_config
from grouprl.train.checkpoint import latest_checkpoint, load_checkpoint
from grouprl.train.config import (
    ConfigError,
    TrainConfig,
    build_config,
    override,
)
from grouprl.train.resume import check_resume_config, read_saved_config
from grouprl.train.setup import apply_lora_config, load_or_build_policy, resolve_device
from grouprl.train.warm_start import env_corpus

__all__ = ["load_run_config", "resume_config", "load_trained_policy"]


def load_run_config(run_dir: str | Path, overrides: Any = ()) -> TrainConfig:
    """The resolved config a run saved in ``run_dir/config.json``, plus overrides (any key:
    for evaluating a run; resuming one goes through :func:`resume_config`)."""
    return build_config(override(read_saved_config(run_dir), overrides))


def resume_config(run_dir: str | Path, overrides: Sequence[str] | Mapping = (), *,
                  force: bool = False) -> TrainConfig:
    """The config to resume the run in ``run_dir`` with: its saved ``config.json`` plus
    ``overrides`` (``key=value`` strings or a nested mapping), with ``run_dir`` set to where the
    run is now.

    Overrides may change only :data:`grouprl.train.resume.RESUMABLE_KEYS` (iterations,
    checkpointing, evaluation, logging, threads, env execution; the module says why each is
    safe); any other difference is a ``ConfigError`` listing every such key, saved → new, and
    naming ``--force``. With ``force`` they are accepted; the recipe's
    ``prepare_run_dir(cfg, True, force=True)`` reports each change and records it in
    ``config.json``. Nothing is written here.
    """
    saved = read_saved_config(run_dir)
    if isinstance(overrides, Mapping):
        data = override(copy.deepcopy(saved), {**overrides, "run_dir": str(run_dir)})
    else:
        data = override(copy.deepcopy(saved), [*overrides, f"run_dir={run_dir}"])
    cfg = build_config(data)
    check_resume_config(saved, cfg, run_dir, force)
    return cfg


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None
                        ) -> tuple[TrainConfig, torch.nn.Module, Any, PromptTemplate, int]:
    """(config, model, tokenizer, template, iteration) of a run's latest (or given) checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    try:
        template = template_from_config(cfg.agent.template)
    except ValueError as err:
        raise ConfigError(f"agent.template: {err}") from None
    model, tok = load_or_build_policy(cfg, run_dir, lambda: env_corpus(cfg, template),
                                      lambda s: None)
    model = apply_lora_config(cfg, model).to(resolve_device(cfg.model.device))
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    iteration = 0
    if ckpt is not None:
        iteration = int(load_checkpoint(ckpt, model=model, restore_rng=False)["iteration"])
    model.eval()
    return cfg, model, tok, template, iteration
