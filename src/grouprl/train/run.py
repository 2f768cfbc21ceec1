"""Opening a saved run: its resolved config (plus overrides) and its trained policy."""

from __future__ import annotations

import json
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
from grouprl.train.setup import apply_lora_config, load_or_build_policy, resolve_device
from grouprl.train.warm_start import env_corpus

__all__ = ["load_run_config", "load_trained_policy"]


def load_run_config(run_dir: str | Path, overrides: Any = ()) -> TrainConfig:
    """The resolved config a run saved in ``run_dir/config.json``, plus overrides."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"run_dir: {str(run_dir)!r} holds no config.json (not a grouprl run)")
    return build_config(override(json.loads(path.read_text()), overrides))


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
