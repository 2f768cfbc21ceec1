"""Data-parallel training on torch.distributed (``torchrun``): the communicator every component
takes (:class:`Comm`; one process = :data:`LOCAL`, all collectives the identity), group-aligned
sharding, the gradient all-reduce of replicated models, FSDP2 helpers and the ``--nproc``
launcher. docs/distributed.md; spec-scale-out §2.

The recommended design (spec-scale-out §0): SPMD ranks, each rolling out a contiguous block of
whole groups (every group-local estimator then runs unchanged), one data-parallel update whose
loss uses global token and sequence counts, rank 0 logging and writing checkpoints.
"""

from .comm import (
    LOCAL,
    Comm,
    ProcessGroupComm,
    current_comm,
    init_distributed,
    is_main_process,
    launched_by_torchrun,
    shard_bounds,
    shutdown,
)
from .grads import all_reduce_gradients

__all__ = ["Comm", "LOCAL", "ProcessGroupComm", "current_comm", "init_distributed",
           "shard_bounds", "all_reduce_gradients", "launched_by_torchrun", "is_main_process",
           "shutdown"]
