"""The gradient all-reduce of a replicated model (small and LoRA models, spec-scale-out §2).

Every rank's loss is ``Σ_local / global`` (the learner's global token and sequence counts), so
the data-parallel gradient is the SUM of the ranks' gradients (not their mean):
``∇L = Σ_r ∇(Σ_{i∈r} ℓ_i / N) = ∇(Σ_i ℓ_i / N)``. One flat all-reduce per bucket of
``bucket_mb`` MiB; a parameter without a gradient on a rank (no micro-batch reached it)
contributes zeros and receives the sum.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .comm import Comm

__all__ = ["all_reduce_gradients"]


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], comm: Comm, *,
                         bucket_mb: float = 64.0) -> None:
    """Replace each parameter's ``.grad`` with the sum over ranks (module docstring)."""
    if not comm.distributed:
        return
    params = [p for p in params if p.requires_grad]
    limit = max(int(bucket_mb * 2**20), 1)
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        bucket.append(p)
        size += p.numel() * p.grad.element_size()
        if size >= limit:
            _reduce_bucket(bucket, comm)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, comm)


def _reduce_bucket(bucket: list[torch.nn.Parameter], comm: Comm) -> None:
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in bucket:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        comm.sum(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
