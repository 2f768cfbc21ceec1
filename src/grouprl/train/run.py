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
from grouprl.train.pamoe import attach_pamoe
from grouprl.train.pamoe_config import pamoe_options
from grouprl.train.resume import check_resume_config, read_saved_config
from grouprl.train.setup import apply_lora_config, load_or_build_policy, resolve_device
from grouprl.train.warm_start import env_corpus

__all__ = ["load_run_config", "resume_config", "load_trained_policy", "untrusted_settings",
           "check_trusted"]

TRUST_FLAG = "--trust-run"


def untrusted_settings(saved: Mapping[str, Any]) -> list[str]:
    """Settings of a saved config that run code from outside grouprl when the run is opened:
    an env given as an import string, and ``model.trust_remote_code``."""
    out = []
    name = str(saved.get("env", {}).get("name", ""))
    if ":" in name:
        out.append(f"env.name={name!r} (imports that module and runs its class)")
    if saved.get("model", {}).get("trust_remote_code"):
        out.append("model.trust_remote_code=true (runs Python code from the model directory)")
    return out


def check_trusted(saved: Mapping[str, Any], run_dir: str | Path, trusted: bool) -> None:
    """Opening a run directory that is not yours is safe: its ``config.json`` may only import
    and run outside code when the caller says it trusts the directory (``--trust-run``)."""
    risky = untrusted_settings(saved)
    if risky and not trusted:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: {'; '.join(risky)} — pass "
                          f"{TRUST_FLAG} if you trust this run directory")


def load_run_config(run_dir: str | Path, overrides: Any = (), *,
                    trusted: bool = False) -> TrainConfig:
    """The resolved config a run saved in ``run_dir/config.json``, plus overrides (any key:
    for evaluating a run; resuming one goes through :func:`resume_config`). A saved config that
    would run outside code needs ``trusted`` (:func:`check_trusted`)."""
    saved = read_saved_config(run_dir)
    check_trusted(saved, run_dir, trusted)
    return build_config(override(saved, overrides))


def resume_config(run_dir: str | Path, overrides: Sequence[str] | Mapping = (), *,
                  force: bool = False, trusted: bool = False) -> TrainConfig:
    """The config to resume the run in ``run_dir`` with: its saved ``config.json`` plus
    ``overrides`` (``key=value`` strings or a nested mapping), with ``run_dir`` set to where the
    run is now.

    Overrides may change only :data:`grouprl.train.resume.RESUMABLE_KEYS` (iterations,
    checkpointing, evaluation, logging, threads, env execution; the module says why each is
    safe); any other difference is a ``ConfigError`` listing every such key, saved → new, and
    naming ``--force``. A saved config that would run outside code needs ``trusted``
    (:func:`check_trusted`). With ``force`` they are accepted; the recipe's
    ``prepare_run_dir(cfg, True, force=True)`` reports each change and records it in
    ``config.json``. Nothing is written here.
    """
    saved = read_saved_config(run_dir)
    check_trusted(saved, run_dir, trusted)
    if isinstance(overrides, Mapping):
        data = override(copy.deepcopy(saved), {**overrides, "run_dir": str(run_dir)})
    else:
        data = override(copy.deepcopy(saved), [*overrides, f"run_dir={run_dir}"])
    cfg = build_config(data)
    check_resume_config(saved, cfg, run_dir, force)
    return cfg


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None, *,
                        trusted: bool = False
                        ) -> tuple[TrainConfig, torch.nn.Module, Any, PromptTemplate, int]:
    """(config, model, tokenizer, template, iteration) of a run's latest (or given) checkpoint;
    ``trusted`` as in :func:`load_run_config`."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, trusted=trusted)
    try:
        template = template_from_config(cfg.agent.template)
    except ValueError as err:
        raise ConfigError(f"agent.template: {err}") from None
    model, tok = load_or_build_policy(cfg, run_dir, lambda: env_corpus(cfg, template),
                                      lambda s: None)
    model = apply_lora_config(cfg, model)
    if cfg.model.pamoe.enabled:                          # the experts + router the run trained
        attach_pamoe(model, pamoe_options(cfg.model.pamoe))
    model = model.to(resolve_device(cfg.model.device))
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    iteration = 0
    if ckpt is not None:
        iteration = int(load_checkpoint(ckpt, model=model, restore_rng=False)["iteration"])
    model.eval()
    return cfg, model, tok, template, iteration
