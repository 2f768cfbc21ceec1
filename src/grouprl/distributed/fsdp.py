"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for models that do not fit one device
(spec-scale-out §1b, §2): sharding, generation through one unshard, and full-state checkpoints
in the one-process format.

* :func:`shard_model`: every decoder layer (the children of each ``...layers`` ModuleList) and
  then the root become FSDP units on a 1-D mesh over all ranks. Every forward and backward is
  then a collective: the learner runs the same number of micro-batches on every rank
  (``Comm.lockstep``) and scales the loss by the world size (FSDP averages gradients).
* :func:`gathered`: all-gathers every unit once and keeps the full weights until the block
  ends (``unshard`` + ``reshard_after_forward=False``), so grouprl's own decoding loop runs a
  different number of steps on each rank without a collective per step (TRL's "gather for
  generation", without a second copy).
* :func:`full_state` / :func:`load_full_state`: full model and optimizer state dicts on rank 0
  (``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``full_state_dict=True,
  cpu_offload=True``; every rank must call), and loading them back with
  ``broadcast_from_rank0=True``. The optimizer state is converted between FSDP's parameter-name
  keys and ``optimizer.state_dict()``'s integer keys, so the files equal a one-process run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from .comm import Comm

__all__ = ["shard_model", "is_sharded", "gathered", "full_state", "load_full_state",
           "to_index_keys", "to_name_keys"]


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, comm: Comm) -> torch.nn.Module:
    """``model`` with its decoder layers and root wrapped by ``fully_shard`` (module docstring);
    the parameters become DTensors sharded over ``comm``'s ranks (in place)."""
    device_type = "cuda" if next(model.parameters()).device.type == "cuda" else "cpu"
    mesh = init_device_mesh(device_type, (comm.world_size,))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] == "layers":
            for layer in module:
                fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _units(model: torch.nn.Module) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Full weights on every rank inside the block (module docstring); a no-op for a model that
    is not sharded."""
    units = _units(model)
    if not units:
        yield model
        return
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        for u in units:          # back to FSDP2's defaults: the root stays gathered between
            u.reshard()          # forward and backward (it is all-gathered again at once)
            u.set_reshard_after_forward(u is not model)


def _options(**kwargs: Any) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, **kwargs)


def _param_names(optimizer_state: dict[str, Any]) -> list[Any]:
    return [p for group in optimizer_state["param_groups"] for p in group["params"]]


def to_index_keys(named: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter names → ``optimizer.state_dict()``'s form
    (integers in param-group order)."""
    index = {name: i for i, name in enumerate(_param_names(named))}
    return {"state": {index[k]: v for k, v in named["state"].items()},
            "param_groups": [{**g, "params": [index[p] for p in g["params"]]}
                             for g in named["param_groups"]]}


def to_name_keys(indexed: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Inverse of :func:`to_index_keys`; ``names`` are the parameter names in param-group
    order (from the live optimizer's name-keyed state dict)."""
    return {"state": {names[int(k)]: v for k, v in indexed["state"].items()},
            "param_groups": [{**g, "params": [names[int(p)] for p in g["params"]]}
                             for g in indexed["param_groups"]]}


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(model_state, optimizer_state)`` in full, on CPU, on rank 0 (empty elsewhere); the
    optimizer state in ``optimizer.state_dict()``'s integer-key form. Every rank must call."""
    msd = get_model_state_dict(model, options=_options(cpu_offload=True))
    osd = None
    if optimizer is not None:
        named = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
        osd = to_index_keys(named) if named else {}
    return msd, osd


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None
                    ) -> None:
    """Load full state dicts (rank 0's are used and broadcast) into a sharded model and its
    optimizer. Every rank must call."""
    set_model_state_dict(model, model_state, options=_options(broadcast_from_rank0=True))
    if optimizer is not None and optimizer_state is not None:
        names = _param_names(get_optimizer_state_dict(model, optimizer, options=_options()))
        set_optimizer_state_dict(model, optimizer, to_name_keys(optimizer_state, names),
                                 options=_options(broadcast_from_rank0=True))
