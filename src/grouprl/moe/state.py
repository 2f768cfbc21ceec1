"""Checkpoint state of PA-MoE: the experts of every multi-LoRA layer and the router, one flat
``{name: tensor}`` mapping (safetensors-ready: detached, contiguous, CPU).

Keys: ``experts.<layer>.lora_A`` (E, r, d_in), ``experts.<layer>.lora_B`` (E, d_out, r) and
``router.<parameter>``. Loading is strict: a missing or unexpected key or a shape mismatch raises
``ValueError``. The router's temperature is a function of the iteration
(:func:`grouprl.moe.routing.temperature_at`), so resuming at the same iteration restores it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .lora import load_multi_lora_state_dict, multi_lora_state_dict

__all__ = ["pamoe_state_dict", "load_pamoe_state_dict", "ROUTER_ATTRIBUTE", "attached_router"]

ROUTER_ATTRIBUTE = "pamoe_router"
"""Name of the phase router sub-module on a policy that trains with it (the trainer attaches
it, so the router travels with the model: optimizer, checkpoints, data-parallel broadcast)."""


def attached_router(model: nn.Module) -> nn.Module | None:
    """The router attached to ``model`` (``None``: none, e.g. reference mode)."""
    return getattr(model, ROUTER_ATTRIBUTE, None)


def pamoe_state_dict(model: nn.Module, router: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The experts (and the router, unless ``None``: reference mode) as one flat mapping."""
    state = {f"experts.{k}": v for k, v in multi_lora_state_dict(model).items()}
    if router is not None:
        state.update({f"router.{k}": v.detach() for k, v in router.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_pamoe_state_dict(model: nn.Module, router: nn.Module | None,
                          state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`pamoe_state_dict` (strict)."""
    experts = {k[len("experts."):]: v for k, v in state.items() if k.startswith("experts.")}
    routers = {k[len("router."):]: v for k, v in state.items() if k.startswith("router.")}
    other = sorted(k for k in state if not k.startswith(("experts.", "router.")))
    if other:
        raise ValueError(f"state: unexpected keys {other[:3]}")
    if router is None and routers:
        raise ValueError("state: holds router weights but no router was given")
    if router is not None:
        if not routers:
            raise ValueError("state: holds no router weights (saved in reference mode?)")
        try:
            router.load_state_dict(routers, strict=True)
        except RuntimeError as err:
            raise ValueError(f"state: router weights do not fit: {err}") from err
    load_multi_lora_state_dict(model, experts)
