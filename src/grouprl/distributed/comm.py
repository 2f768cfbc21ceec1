"""The communicator: the few collectives grouprl's components need, with a one-process version
whose collectives are the identity, so components never branch on whether they run under
``torchrun``.

``Comm.sum(t)`` is ``all_reduce(t, SUM)`` (in place, returned); ``max``/``min`` likewise;
``gather(obj)`` is ``all_gather_object`` (a list indexed by rank); ``main_first(fn)`` runs ``fn``
on rank 0, then on the other ranks (files rank 0 writes — a tiny model's base, a warm start —
are then loaded, not rebuilt), and returns on every rank only when all have run it; an exception
on any rank is raised on every rank instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Comm", "LOCAL", "ProcessGroupComm", "current_comm", "init_distributed",
           "shard_bounds", "launched_by_torchrun", "shutdown", "is_main_process"]

T = TypeVar("T")


def shard_bounds(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``count`` items: sizes differ by at
    most one, the first ``count % world_size`` ranks take one more (``torch.tensor_split``)."""
    base, extra = divmod(count, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class Comm:
    """One process (world size 1): every collective returns its input."""

    rank = 0
    world_size = 1
    lockstep = False
    """True when every forward/backward is itself a collective (FSDP2): ranks must then run the
    same number of micro-batches (short ranks run empty ones)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather(self, obj: T) -> list[T]:
        return [obj]

    def broadcast(self, obj: T) -> T:
        return obj

    def barrier(self) -> None:
        return None

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        return None

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """All-reduced sums of ``values`` (float64)."""
        return [float(v) for v in self.sum(torch.tensor(list(values), dtype=torch.float64))]

    def main_first(self, fn: Callable[[], T]) -> T:
        return fn()


LOCAL = Comm()
"""The one-process communicator."""


class ProcessGroupComm(Comm):
    """The default process group of ``torch.distributed`` (gloo on CPU, NCCL on GPU)."""

    def __init__(self, device: torch.device, lockstep: bool = False) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device, self.lockstep = device, lockstep
        self.backend = dist.get_backend()

    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        if self.backend == "nccl" and t.device.type != "cuda":
            moved = t.to(self.device)
            dist.all_reduce(moved, op=op)
            t.copy_(moved.to(t.device))
            return t
        dist.all_reduce(t, op=op)
        return t

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def gather(self, obj: T) -> list[T]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                if self.backend == "nccl" and t.device.type != "cuda":
                    moved = t.data.to(self.device)
                    dist.broadcast(moved, src=0)
                    t.data.copy_(moved.to(t.device))
                else:
                    dist.broadcast(t.data, src=0)

    def main_first(self, fn: Callable[[], T]) -> T:
        error: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 — re-raised on every rank below
                error = exc
        failed = self.broadcast(error if error is None else _portable(error))
        if failed is not None:
            raise (error if error is not None else failed)
        if not self.is_main:                       # then the others, while rank 0 waits
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 — reported to every rank below
                error = exc
        bad = [r for r, flag in enumerate(self.gather(error is not None)) if flag]
        if bad:
            raise error if error is not None else RuntimeError(
                f"rank {bad[0]} failed (see its log); every rank stops")
        return result


def _portable(exc: BaseException) -> BaseException:
    """``exc`` when it pickles, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}")


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` with a world size above one."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str = "cpu", *, lockstep: bool = False,
                     timeout_s: float = 1800.0) -> Comm:
    """The communicator of this process: :data:`LOCAL` unless started by ``torchrun`` with
    several processes, else the default process group (initialised here when needed: NCCL when
    ``device`` is CUDA, each rank on ``cuda:LOCAL_RANK``; gloo otherwise)."""
    if not launched_by_torchrun():
        return LOCAL
    cuda = str(device).startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return ProcessGroupComm(torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
                            lockstep=lockstep)


def current_comm() -> Comm:
    """A communicator over the already initialised default process group, else :data:`LOCAL`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
            else torch.device("cpu")
        return ProcessGroupComm(device)
    return LOCAL


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or a process started without it."""
    return int(os.environ.get("RANK", "0")) == 0


def shutdown() -> None:
    """Destroy the default process group when this process initialised one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
