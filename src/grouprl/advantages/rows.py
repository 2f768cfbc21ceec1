"""Validate a RolloutBatch once and derive what every estimator shares.

``prepare_rows`` factorizes the identifier columns, sorts rows by (trajectory, step) once, checks
the batch's invariants and computes per-trajectory episode returns. Each failed check raises a
``ValueError`` that names the column and the first offending row (input order).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from grouprl.batch import RolloutBatch, _as_tensor, _length, factorize

from .segments import segment_sum

__all__ = ["Rows", "prepare_rows"]

_COLUMNS = ("group_id", "traj_id", "step", "reward", "state", "next_state", "success", "invalid",
            "agent_id")


@dataclass
class Rows:
    """Validated, factorized view of a RolloutBatch (float64 values, dense int64 codes).

    Per row: ``group``, ``traj``, ``step``, ``reward``, ``invalid`` (0/1 float), ``remaining``
    (steps left after this one in its trajectory), optional ``state``/``next_state`` codes (one
    id space, 0..num_states-1) and ``agent`` codes. ``order`` sorts rows by (traj, step).
    Per trajectory: ``traj_group``, ``traj_len``, ``traj_return``, ``traj_success``,
    ``traj_first_row`` (the row of its step 0).
    """

    n: int
    group: torch.Tensor
    num_groups: int
    traj: torch.Tensor
    num_trajs: int
    step: torch.Tensor
    reward: torch.Tensor
    invalid: torch.Tensor
    order: torch.Tensor
    remaining: torch.Tensor
    traj_group: torch.Tensor
    traj_len: torch.Tensor
    traj_return: torch.Tensor
    traj_success: torch.Tensor
    traj_first_row: torch.Tensor
    state: torch.Tensor | None = None
    next_state: torch.Tensor | None = None
    num_states: int = 0
    agent: torch.Tensor | None = None
    num_agents: int = 0


def _first_row(bad: torch.Tensor) -> int:
    return int(torch.nonzero(bad)[0, 0])


def prepare_rows(batch: RolloutBatch, needs: Collection[str] = (), *, estimator: str = ""
                 ) -> Rows:
    """Validate ``batch`` and build :class:`Rows`. ``needs`` lists optional columns required."""
    who = f" (needed by {estimator!r})" if estimator else ""
    for name in needs:
        if getattr(batch, name) is None:
            raise ValueError(f"{name}: column is missing{who}; pass {name}=... to RolloutBatch")
    lengths = {name: _length(getattr(batch, name), name) for name in _COLUMNS
               if getattr(batch, name) is not None}
    n = lengths["group_id"]
    for name, length in lengths.items():
        if length != n:
            raise ValueError(f"{name}: has {length} rows but group_id has {n}; all columns must "
                             "have one length")

    group, num_groups = factorize(batch.group_id, "group_id")
    traj, num_trajs = factorize(batch.traj_id, "traj_id")
    step = _as_tensor(batch.step, "step", torch.int64)
    reward = _as_tensor(batch.reward, "reward", torch.float64)
    if not bool(torch.isfinite(reward).all()):
        raise ValueError(f"reward: row {_first_row(~torch.isfinite(reward))} is not finite "
                         f"({reward[_first_row(~torch.isfinite(reward))].item()}); rewards must "
                         "be finite numbers")
    invalid = (torch.zeros(n, dtype=torch.float64) if batch.invalid is None
               else _as_tensor(batch.invalid, "invalid", torch.bool).to(torch.float64))
    if n == 0:
        empty_l, empty_f = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
        return Rows(0, empty_l, 0, empty_l, 0, empty_l, empty_f, empty_f, empty_l, empty_l,
                    empty_l, empty_l, empty_f, torch.zeros(0, dtype=torch.bool), empty_l,
                    state=None if batch.state is None else empty_l,
                    next_state=None if batch.next_state is None else empty_l,
                    agent=None if batch.agent_id is None else empty_l)
    if bool((step < 0).any()):
        row = _first_row(step < 0)
        raise ValueError(f"step: row {row} has step {int(step[row])}; steps are 0..T-1")
    if int(step.max()) >= n:
        row = _first_row(step >= n)
        raise ValueError(f"step: row {row} has step {int(step[row])} but the batch has only {n} "
                         "rows; steps must be 0..T-1 and contiguous within each trajectory")

    rows = torch.arange(n)
    # A trajectory lies in one group: compare each row's group with its trajectory's first row.
    traj_first_input = torch.full((num_trajs,), n, dtype=torch.int64).scatter_reduce_(
        0, traj, rows, "amin")
    bad = group != group[traj_first_input[traj]]
    if bool(bad.any()):
        row = _first_row(bad)
        raise ValueError(f"group_id: row {row} puts trajectory {_show(batch.traj_id, row)} in a "
                         f"second group ({_show(batch.group_id, row)}); a trajectory must lie in "
                         "exactly one group")

    # Sort once by (trajectory, step); steps must then read 0, 1, ..., T-1 in every trajectory.
    order = torch.argsort(traj * n + step, stable=True)
    traj_sorted, step_sorted = traj[order], step[order]
    traj_len = torch.bincount(traj, minlength=num_trajs)
    start = torch.cumsum(traj_len, 0) - traj_len
    position = torch.arange(n) - start[traj_sorted]
    duplicate = torch.zeros(n, dtype=torch.bool)
    duplicate[1:] = (traj_sorted[1:] == traj_sorted[:-1]) & (step_sorted[1:] == step_sorted[:-1])
    if bool(duplicate.any()):
        dup_rows = order[duplicate]
        row = int(dup_rows.min())
        raise ValueError(f"step: row {row} repeats step {int(step[row])} of trajectory "
                         f"{_show(batch.traj_id, row)}; each step appears once per trajectory")
    gap = step_sorted != position
    if bool(gap.any()):
        row = int(order[gap].min())
        raise ValueError(f"step: row {row} has step {int(step[row])} but trajectory "
                         f"{_show(batch.traj_id, row)} has {int(traj_len[traj[row]])} rows; steps "
                         "must be contiguous 0..T-1")

    remaining = torch.empty(n, dtype=torch.int64)
    remaining[order] = traj_len[traj_sorted] - 1 - position
    traj_group = group[traj_first_input]
    traj_return = segment_sum(reward, traj, num_trajs)
    traj_first_row = order[start]

    if batch.success is None:
        traj_success = traj_return > 0
    else:
        success = _as_tensor(batch.success, "success", torch.bool)
        bad = success != success[traj_first_input[traj]]
        if bool(bad.any()):
            row = _first_row(bad)
            raise ValueError(f"success: row {row} disagrees with the rest of trajectory "
                             f"{_show(batch.traj_id, row)}; success is per trajectory")
        traj_success = success[traj_first_input]

    out = Rows(n=n, group=group, num_groups=num_groups, traj=traj, num_trajs=num_trajs, step=step,
               reward=reward, invalid=invalid, order=order, remaining=remaining,
               traj_group=traj_group, traj_len=traj_len, traj_return=traj_return,
               traj_success=traj_success, traj_first_row=traj_first_row)

    if batch.state is not None or batch.next_state is not None:
        cols = [(name, _as_tensor(getattr(batch, name), name, torch.int64))
                for name in ("state", "next_state") if getattr(batch, name) is not None]
        uniq, codes = torch.unique(torch.cat([c for _, c in cols]), return_inverse=True)
        out.num_states = int(uniq.numel())
        for k, (name, _) in enumerate(cols):
            setattr(out, name, codes[k * n:(k + 1) * n])
    if batch.agent_id is not None:
        out.agent, out.num_agents = factorize(batch.agent_id, "agent_id")
    return out


def _show(column: object, row: int) -> str:
    try:
        value = column[row]  # type: ignore[index]
        value = value.item() if hasattr(value, "item") else value
    except Exception:  # pragma: no cover - display only
        return f"at row {row}"
    return repr(value)
