"""How the learner cuts rows into mini- and micro-batches (spec-agentic-credit §1.4; spec-losses
§2.2): row batches, whole-group batches, the token tensors of a micro-batch, and — data parallel
(spec-scale-out §2) — the global permutation each rank takes its own members of and the filler
micro-batches that keep FSDP2 ranks in lock-step."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from grouprl.batch import Rollout
from grouprl.distributed import LOCAL, Comm

__all__ = ["gather", "micro_slices", "filler_batch", "lockstep_count", "row_batches",
           "group_batches"]


def gather(rows: Rollout, idx: torch.Tensor, device: torch.device | str,
           columns: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Token tensors of rows ``idx`` with padding columns trimmed, behaviour/reference
    log-probs when set, and the per-row ``columns``, on ``device``."""
    pm, rm = rows.prompt_mask[idx], rows.response_mask[idx]
    p = int(pm.sum(1).max()) if idx.numel() else 0
    r = max(int(rm.sum(1).max()) if idx.numel() else 0, 1)
    width = rows.prompt_ids.shape[1]
    out = {"prompt_ids": rows.prompt_ids[idx, width - p:], "prompt_mask": pm[:, width - p:],
           "response_ids": rows.response_ids[idx, :r], "response_mask": rm[:, :r]}
    for name in ("old_logp", "ref_logp"):
        if getattr(rows, name) is not None:
            out[name] = getattr(rows, name)[idx, :r]
    for name in columns:
        out[name] = rows.column(name)[idx]
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


def micro_slices(rows: Rollout, index: torch.Tensor, size: int,
                 device: torch.device | str = "cpu", comm: Comm = LOCAL
                 ) -> Iterator[tuple[torch.Tensor | None, dict[str, torch.Tensor]]]:
    """Yield ``(row_index, tensors)`` per micro-batch of ``size`` rows of ``index``; under a
    lock-step communicator (FSDP2) short ranks then yield ``(None, filler)`` until every rank
    has yielded as many (:func:`filler_batch`)."""
    count = 0
    for start in range(0, index.numel(), size):
        idx = index[start:start + size]
        count += 1
        yield idx, gather(rows, idx, device)
    for _ in range(lockstep_count(comm, count) - count):
        yield None, filler_batch(device)


def lockstep_count(comm: Comm, count: int) -> int:
    """The most micro-batches any rank runs (lock-step communicators), else ``count``."""
    if not comm.lockstep:
        return count
    return int(comm.max(torch.tensor([count], dtype=torch.int64))[0])


def filler_batch(device: torch.device | str) -> dict[str, torch.Tensor]:
    """A one-token row whose forward and ``0 ·`` backward join an FSDP2 model's collectives on a
    rank that has no micro-batch left (it contributes nothing)."""
    one = torch.ones(1, 1, dtype=torch.long, device=device)
    return {"prompt_ids": one * 0, "prompt_mask": one, "response_ids": one * 0,
            "response_mask": one}


def row_batches(n: int, num_mini_batches: int, micro_batch_size: int, *,
                generator: torch.Generator | None = None, offset: int = 0,
                total: int | None = None) -> list[tuple[int, list[torch.Tensor]]]:
    """``[(0, [micro row index, ...]), ...]``: rows shuffled with ``generator`` when there are
    several mini-batches, split into ``min(num_mini_batches, n)`` mini-batches
    (``torch.tensor_split`` sizes), each cut into micro-batches of ``micro_batch_size`` rows.

    Data parallel: the permutation and split are of the ``total`` global rows; this rank owns
    global rows ``[offset, offset + n)`` and keeps, per mini-batch, its own members (local
    indices, in permutation order; a mini-batch may hold none of them)."""
    total = n if total is None else total
    if total == 0:
        return []
    perm = torch.randperm(total, generator=generator) if num_mini_batches > 1 \
        else torch.arange(total)
    out = []
    for mini in torch.tensor_split(perm, min(num_mini_batches, total)):
        own = mini[(mini >= offset) & (mini < offset + n)] - offset
        out.append((0, [m for m in torch.split(own, micro_batch_size) if m.numel()]))
    return out


def group_batches(group: torch.Tensor, num_mini_batches: int, micro_batch_size: int, *,
                  shuffle: bool = True, generator: torch.Generator | None = None,
                  all_groups: torch.Tensor | None = None
                  ) -> list[tuple[int, list[torch.Tensor]]]:
    """Group-aligned mini- and micro-batches: ``[(questions, [micro row index, ...]), ...]``.

    The distinct ids of ``group`` (N,) are shuffled with ``generator`` (when ``shuffle``; else
    taken in sorted order) and split into ``min(num_mini_batches, G)`` mini-batches of whole
    groups (``torch.tensor_split`` sizes); each mini-batch is cut greedily, in order, into
    micro-batches of whole groups holding at most ``micro_batch_size`` rows, except that a
    micro-batch always holds at least one group (a group larger than ``micro_batch_size`` is
    its own micro-batch). Rows of a group keep their original order.

    Data parallel: ``all_groups`` (sorted) are the ids of every rank's groups; the shuffle and
    the split are of those, and this rank keeps the rows of its own groups (the question count
    of a mini-batch stays global).
    """
    n = int(group.numel())
    if all_groups is None:
        if n == 0:
            return []
        uniq, inv = torch.unique(group, return_inverse=True)
    else:
        if all_groups.numel() == 0:
            return []
        uniq, inv = all_groups, torch.searchsorted(all_groups, group)
    num = int(uniq.numel())
    order = torch.randperm(num, generator=generator) if shuffle else torch.arange(num)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num)
    rows = torch.sort(rank[inv], stable=True).indices              # rows by shuffled group
    sizes = torch.bincount(inv, minlength=num)[order].tolist()     # group sizes in that order
    out: list[tuple[int, list[torch.Tensor]]] = []
    pos = 0                                                        # first row of the group
    for chunk in torch.tensor_split(torch.arange(num), min(num_mini_batches, num)):
        micro: list[torch.Tensor] = []
        start = pos
        for k in chunk.tolist():
            if pos > start and pos - start + sizes[k] > micro_batch_size:
                micro.append(rows[start:pos])
                start = pos
            pos += sizes[k]
        if pos > start:
            micro.append(rows[start:pos])
        out.append((int(chunk.numel()), micro))
    return out
