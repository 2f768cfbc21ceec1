"""Run setup shared by every recipe: run directory, seeding, device, stop signal, the policy
(warm start, local model or tiny model), LoRA and the reference model, optimizer and schedule.

Each function does one job; a recipe calls them in order (:mod:`grouprl.recipes`)::

    ckpt        = prepare_run_dir(cfg, resume, force=force, echo=echo)   # config.json (atomic);
                  # refuses to overwrite a run, and a resume that changes training keys
    seed_everything(cfg.seed); device = resolve_device(cfg.model.device)
    model, tok  = load_or_build_policy(cfg, run_dir, corpus, echo)
    model, ref, ref_context = attach_lora_and_reference(cfg, model, need_reference)
                  # (RL: attach_adapters, which also covers model.pamoe's routed experts)
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

from grouprl.moe import attached_router
from grouprl.policy import (
    LoraOptions,
    apply_lora,
    build_tiny_policy,
    disable_adapter,
    frozen_copy,
    load_policy,
    resolve_dtype,
)
from grouprl.train.checkpoint import latest_checkpoint, list_checkpoints
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict
from grouprl.train.config_diff import format_change
from grouprl.train.metrics import METRICS_FILE
from grouprl.train.pamoe import make_phase_routing
from grouprl.train.resume import (
    CONFIG_FILE,
    check_resume_config,
    read_saved_config,
    refuse_legacy_checkpoints,
)
from grouprl.train.row_policy import PLAIN
from grouprl.train.safe_io import write_text_atomically
from grouprl.train.saved_model import (
    load_verified_model_dir,
    model_dir_record,
    save_model_dir_atomically,
)

__all__ = ["WARM_START_DIR", "BASE_MODEL_DIR", "TrainResult", "prepare_run_dir",
           "seed_everything", "resolve_device", "StopRequest", "stop_on_signal",
           "TinyCorpus", "load_or_build_policy", "attach_lora_and_reference", "attach_adapters",
           "lr_lambda",
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


def prepare_run_dir(cfg: TrainConfig, resume: bool, *, force: bool = False,
                    echo: Callable[[str], None] | None = None) -> Path | None:
    """Create ``run_dir``, set the thread count and write the resolved ``config.json``
    atomically; the latest checkpoint when resuming (else None).

    A new run refuses a ``run_dir`` that holds a run (``metrics.jsonl`` or checkpoints). A
    resume refuses a config that differs from the saved one outside
    :data:`grouprl.train.resume.RESUMABLE_KEYS` (``ConfigError`` listing every such key, saved
    → new) unless ``force``, and a run whose newest checkpoint is in an old format; the changes
    it accepts are reported through ``echo`` and recorded (``config.json`` is rewritten only
    when the config changed).
    """
    echo = echo or default_echo
    run_dir = Path(cfg.run_dir)
    if not resume and ((run_dir / METRICS_FILE).exists() or list_checkpoints(run_dir)):
        raise ConfigError(f"run_dir: {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or choose another run_dir")
    text = json.dumps(config_to_dict(cfg), indent=2)
    if resume:
        refuse_legacy_checkpoints(run_dir)
        if (run_dir / CONFIG_FILE).is_file():
            changes = check_resume_config(read_saved_config(run_dir), cfg, run_dir, force)
            for key, old, new, allowed in changes:
                echo(f"config change on resume{'' if allowed else ' (--force)'}: "
                     f"{format_change(key, old, new)}")
            if not changes:
                text = None
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if text is not None:
        write_text_atomically(run_dir / CONFIG_FILE, text)
    return latest_checkpoint(run_dir) if resume else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``model.device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available, else cpu).

    Anything else (``mps``, ``xpu``, ``meta``, a typo) is refused with a :class:`ConfigError`,
    as is a cuda device when CUDA is not available or ``cuda:N`` beyond the visible devices:
    grouprl is tested on CPU and CUDA only, and a device that passed this check but fails at
    the first tensor would lose the run's setup work.
    """
    accepted = "use cpu, cuda, cuda:N or auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"model.device: {name!r} is not a device; {accepted}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"model.device: {name!r} is not supported (grouprl runs on CPU and "
                          f"CUDA devices); {accepted}")
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ConfigError(f"model.device: {name!r} is not a device; {accepted}")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} requested but CUDA is not available; use cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"model.device: {name!r} is not available: {count} CUDA device(s) "
                          f"visible (cuda:0 … cuda:{count - 1}); check CUDA_VISIBLE_DEVICES")
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

    Saved directories are verified and loaded, never rebuilt (:mod:`grouprl.train.saved_model`):
    a damaged one, one without its checksum manifest, or one built with other values of the
    keys that determine it, is a ``ConfigError`` naming the folder and the fix. Leftovers of
    interrupted saves are removed; the base model is written atomically."""
    m = cfg.model
    warm, base = run_dir / WARM_START_DIR, run_dir / BASE_MODEL_DIR
    loaded = load_verified_model_dir(warm, model_dir_record(cfg, WARM_START_DIR), dtype=m.dtype)
    if loaded is not None:
        return loaded
    if m.path is not None:
        return load_policy(m.path, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                           echo=echo)
    loaded = load_verified_model_dir(base, model_dir_record(cfg, BASE_MODEL_DIR), dtype=m.dtype)
    if loaded is not None:
        return loaded
    c = corpus()
    t = m.tiny
    isolate = t.isolate_chars if t.isolate_chars is not None else c.isolate_chars
    echo(f"building the tiny model (tokenizer on {len(c.texts)} texts of {c.source})")
    model, tok = build_tiny_policy(c.texts, vocab_size=t.vocab_size,
                                   special_tokens=c.special_tokens, isolate_chars=isolate,
                                   seed=cfg.seed, hidden_size=t.hidden_size,
                                   num_layers=t.num_layers, num_heads=t.num_heads,
                                   num_kv_heads=t.num_kv_heads,
                                   intermediate_size=t.intermediate_size)
    save_model_dir_atomically(model, tok, base, model_dir_record(cfg, BASE_MODEL_DIR))
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


def attach_adapters(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any,
                    need_reference: bool) -> tuple[torch.nn.Module, Any, Any, Any]:
    """``(policy, reference, reference_context, routing)``: ``model.pamoe`` injects routed
    LoRA experts and the phase router (routing: :class:`grouprl.train.pamoe.PhaseRouting`, the
    reference the base under ``adapters_disabled``); otherwise
    :func:`attach_lora_and_reference` and :data:`~grouprl.train.row_policy.PLAIN` routing."""
    if cfg.model.pamoe.enabled:
        routing, base = make_phase_routing(cfg, model, tokenizer)
        return model, (model if need_reference else None), \
            (base if need_reference else None), routing
    return (*attach_lora_and_reference(cfg, model, need_reference), PLAIN)


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
    """AdamW over the trainable parameters and its LR schedule (``optim.*``); a PA-MoE router
    is its own parameter group when ``model.pamoe.router_lr`` is set."""
    o = cfg.optim
    router = attached_router(model)
    router_lr = cfg.model.pamoe.router_lr if router is not None else None
    own = {id(p) for p in router.parameters()} if router_lr is not None else set()
    params: list[Any] = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    if own:
        params = [{"params": params},
                  {"params": [p for p in router.parameters() if p.requires_grad],
                   "lr": router_lr}]
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
