"""The model part of a checkpoint (:mod:`grouprl.train.checkpoint`): ``model.safetensors`` of a
whole model (safetensors' ``save_model``: tied tensors stored once, ``removed: kept`` in the
metadata), of a peft adapter (the active adapter + ``adapter_config.json``), or of a sharded
model's gathered full state written in exactly the whole-model form."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import _remove_duplicate_names, load_file, load_model, save_file, save_model

from grouprl.moe import attached_router, load_pamoe_state_dict, multi_lora_layers, pamoe_state_dict

__all__ = ["MODEL_FILE", "ADAPTER_CONFIG_FILE", "save_model_file", "load_model_file",
           "save_full_state", "with_tied", "safe_tensors"]

MODEL_FILE = "model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def safe_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, none sharing storage with another (safetensors refuses aliasing)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for key, t in tensors.items():
        t = t.detach().contiguous()
        if t.numel():
            ptr = (str(t.device), t.untyped_storage().data_ptr())
            if ptr in seen:
                t = t.clone()
            else:
                seen.add(ptr)
        out[key] = t
    return out


def _as_peft(model: torch.nn.Module) -> Any | None:
    """``model`` if it is a peft ``PeftModel`` (peft is only consulted if already imported)."""
    peft = sys.modules.get("peft")
    if peft is None:
        return None
    return model if isinstance(model, peft.PeftModel) else None


def _has_experts(model: torch.nn.Module) -> bool:
    """Whether ``model`` trains PA-MoE experts (:mod:`grouprl.moe`): only they are saved."""
    return any(True for _ in multi_lora_layers(model))


def save_model_file(directory: Path, model: torch.nn.Module) -> None:
    if _has_experts(model):            # experts + router, the frozen base stays out
        save_file(safe_tensors(pamoe_state_dict(model, attached_router(model))),
                  str(directory / MODEL_FILE),
                  metadata={"format": "pt", "grouprl_content": "pamoe_experts"})
        return
    peft_model = _as_peft(model)
    if peft_model is None:
        save_model(model, str(directory / MODEL_FILE), metadata={"format": "pt"})
        return

    adapter = peft_model.active_adapter
    weights = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    save_file(safe_tensors(weights), str(directory / MODEL_FILE),
              metadata={"format": "pt", "grouprl_content": "peft_adapter",
                        "adapter_name": adapter})
    peft_model.peft_config[adapter].save_pretrained(str(directory))


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (tied embeddings), in registration order."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def save_full_state(path: Path, model: torch.nn.Module,
                     state: Mapping[str, torch.Tensor]) -> None:
    """``state`` (a sharded model's full state dict) written exactly as ``save_model(model)``
    writes a whole model: tied names aliased, then safetensors' own de-duplication (the kept
    name and the ``removed: kept`` metadata of a one-process checkpoint)."""
    ordered = {k: state[k] for k in model.state_dict() if k in state}
    for group in _tied_groups(model):
        present = [n for n in group if n in ordered]
        for name in present[1:]:
            ordered[name] = ordered[present[0]]
    metadata = {"format": "pt"}
    for kept, removed in _remove_duplicate_names(ordered).items():
        for name in removed:
            metadata[name] = kept
            del ordered[name]
    save_file(safe_tensors(ordered), str(path), metadata=metadata)


def with_tied(state: dict[str, torch.Tensor], model: torch.nn.Module
               ) -> dict[str, torch.Tensor]:
    """A one-process checkpoint's tensors with the tied names it left out filled in."""
    for group in _tied_groups(model):
        kept = next((n for n in group if n in state), None)
        for name in group:
            if kept is not None and name not in state:
                state[name] = state[kept]
    return state


def load_model_file(directory: Path, model: torch.nn.Module) -> None:
    if _has_experts(model):
        try:
            load_pamoe_state_dict(model, attached_router(model),
                                  load_file(str(directory / MODEL_FILE)))
        except ValueError as err:
            raise ValueError(f"model: the experts in {directory} do not fit this model "
                             f"(model.pamoe settings changed?): {err}") from None
        return
    peft_model = _as_peft(model)
    has_adapter = (directory / ADAPTER_CONFIG_FILE).is_file()
    if peft_model is None:
        if has_adapter:
            raise ValueError(f"model: checkpoint {directory} holds peft adapter weights only, "
                             "but model is not a peft PeftModel; wrap the base model with the "
                             "same adapter config first")
        load_model(model, str(directory / MODEL_FILE), strict=True)
        return
    if not has_adapter:
        raise ValueError(f"model: checkpoint {directory} holds a full model state dict, but "
                         "model is a peft PeftModel; load it into the unwrapped model instead")

    adapter = peft_model.active_adapter
    weights = load_file(str(directory / MODEL_FILE))
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=adapter))
    if expected != set(weights):
        missing = sorted(expected - set(weights))[:5]
        unexpected = sorted(set(weights) - expected)[:5]
        raise ValueError(f"model: adapter weights in {directory} do not match adapter "
                         f"{adapter!r}: missing {missing}, unexpected {unexpected}")
    result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"model: unexpected adapter keys in {directory}: "
                         f"{sorted(result.unexpected_keys)[:5]}")
