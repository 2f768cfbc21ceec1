"""Run setup shared by every recipe: run directory, seeding, device, stop signal, the policy
(warm start, local model or tiny model), LoRA and the reference model, optimizer and schedule.

Each function does one job; a recipe calls them in order (:mod:`grouprl.recipes`)::

    ckpt        = prepare_run_dir(cfg, resume)        # refuses to overwrite a run; config.json
    seed_everything(cfg.seed); device = resolve_device(cfg.model.device)
    model, tok  = load_or_build_policy(cfg, run_dir, corpus, echo)
    model, ref, ref_context = attach_lora_and_reference(cfg, model, need_reference)
    optimizer, scheduler    = make_optimizer(cfg, model, total_steps)
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouprl.policy import (
    LoraOptions,
    apply_lora,
    build_tiny_policy,
    disable_adapter,
    frozen_copy,
    load_policy,
    resolve_dtype,
)
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict

__all__ = ["WARM_START_DIR", "BASE_MODEL_DIR", "TrainResult", "prepare_run_dir",
           "seed_everything", "resolve_device", "StopRequest", "stop_on_signal",
           "TinyCorpus", "load_or_build_policy", "attach_lora_and_reference", "lr_lambda",
           "make_optimizer", "default_echo", "step_schedule"]

WARM_START_DIR = "warm_start"
BASE_MODEL_DIR = "base_model"


@dataclass
class TrainResult:
    """Summary of a finished run: ``iterations`` are RL iterations or optimizer steps;
    ``success_before``/``success_after`` the held-out score at the start and the end."""

    run_dir: Path
    iterations: int
    success_before: float | None
    success_after: float | None
    metrics: list[dict]


def default_echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path | None:
    """Create ``run_dir``, refuse to overwrite an existing run unless resuming, write the
    resolved ``config.json``, set the thread count; the checkpoint to resume from (or None)."""
    run_dir = Path(cfg.run_dir)
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run_dir: {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = latest_checkpoint(run_dir) if resume else None
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    return ckpt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


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


class StopRequest:
    """First Ctrl-C / SIGTERM: finish the current step, checkpoint, exit. Second: abort."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this iteration, then saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)


@contextmanager
def stop_on_signal(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT/SIGTERM to ``stop`` while the block runs (main thread only)."""
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@dataclass
class TinyCorpus:
    """What the tiny model's tokenizer is trained on: texts, special tokens, isolated chars."""

    texts: list[str]
    special_tokens: tuple[str, ...] = ()
    isolate_chars: str = ""
    source: str = ""


def load_or_build_policy(cfg: TrainConfig, run_dir: Path, corpus: Callable[[], TinyCorpus],
                         echo: Callable[[str], None], *, cast_tiny: bool = False
                         ) -> tuple[torch.nn.Module, Any]:
    """The starting policy: the run's saved warm start, else ``model.path``, else the run's
    saved tiny base model, else a tiny model built on ``corpus()`` (saved to ``base_model``).
    Saved directories are loaded, never rebuilt."""
    m = cfg.model
    warm, base = run_dir / WARM_START_DIR, run_dir / BASE_MODEL_DIR
    if (warm / "config.json").is_file():
        return load_policy(warm, dtype=m.dtype)
    if m.path is not None:
        return load_policy(m.path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
    if (base / "config.json").is_file():
        return load_policy(base, dtype=m.dtype)
    c = corpus()
    t = m.tiny
    isolate = t.isolate_chars if t.isolate_chars is not None else c.isolate_chars
    echo(f"building the tiny model (tokenizer on {len(c.texts)} texts of {c.source})")
    model, tok = build_tiny_policy(c.texts, vocab_size=t.vocab_size,
                                   special_tokens=c.special_tokens, isolate_chars=isolate,
                                   seed=cfg.seed, save_dir=base, hidden_size=t.hidden_size,
                                   num_layers=t.num_layers, num_heads=t.num_heads,
                                   num_kv_heads=t.num_kv_heads,
                                   intermediate_size=t.intermediate_size)
    return (model.to(resolve_dtype(m.dtype)) if cast_tiny else model), tok


def apply_lora_config(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the configured LoRA adapters (unchanged when ``model.lora`` is off)."""
    lo = cfg.model.lora
    if not lo.enabled:
        return model
    return apply_lora(model, LoraOptions(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                                         target_modules=tuple(lo.target_modules)))


def attach_lora_and_reference(cfg: TrainConfig, model: torch.nn.Module, need_reference: bool
                              ) -> tuple[torch.nn.Module, Any, Callable[[], Any] | None]:
    """``(policy, reference, reference_context)``: with LoRA the reference is the base model
    (the policy under ``disable_adapter``), else a frozen copy; None when not needed."""
    lora = cfg.model.lora.enabled
    model = apply_lora_config(cfg, model)
    if not need_reference:
        return model, None, None
    if lora:
        return model, model, (lambda: disable_adapter(model))
    return model, frozen_copy(model), None


def lr_lambda(total: int, warmup: int, schedule: str) -> Callable[[int], float]:
    """LR multiplier per scheduler step: linear warm-up, then constant / linear / cosine decay
    over ``total`` steps."""
    total = max(total, 1)

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        frac = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - frac
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0

    return fn


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its LR schedule (``optim.*``)."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, o.warmup_iterations, o.schedule))
    return optimizer, scheduler


def step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Advance the LR schedule one iteration/step. The schedule follows iterations, not optimizer
    steps, so an iteration whose updates were all skipped (non-finite, or nothing to learn from)
    still advances it; torch's warning about stepping before ``optimizer.step()`` is expected
    then and silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
