"""``make_backend``: the generation backend named by ``rollout.generation_backend``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...validation import check_choice
from .base import GenerationBackend
from .hf import HFBackend
from .vllm_colocated import VLLMColocated

__all__ = ["BACKENDS", "make_backend"]

BACKENDS = ("hf", "vllm")


def make_backend(name: str, model: torch.nn.Module, tokenizer, *,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 max_prompt_tokens: int | None = None, seed: int = 0,
                 work_dir: str | Path | None = None,
                 vllm_options: Mapping[str, Any] | None = None) -> GenerationBackend:
    """``"hf"``: :class:`HFBackend` on ``model`` itself (shares its weights); ``"vllm"``:
    :meth:`VLLMColocated.from_policy` in ``work_dir`` with ``vllm_options`` (the
    ``rollout.vllm`` keys), loaded with ``model``'s current weights."""
    check_choice("rollout.generation_backend", name, BACKENDS)
    if name == "hf":
        return HFBackend(model, tokenizer, generator=generator, batch_size=batch_size,
                         max_prompt_tokens=max_prompt_tokens)
    if work_dir is None:
        raise ValueError("work_dir: the vllm backend needs a directory for the engine's model "
                         "config and tokenizer")
    return VLLMColocated.from_policy(model, tokenizer, work_dir, generator=generator,
                                     max_prompt_tokens=max_prompt_tokens, seed=seed,
                                     **dict(vllm_options or {}))
