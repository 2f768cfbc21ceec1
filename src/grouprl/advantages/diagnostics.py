"""How often states repeat inside a task group: the precondition for step-level credit to help.

GiGPO's step groups (arXiv 2505.10978 §4.2) and HGPO's context groups (arXiv 2602.22817 §4) only
carry signal when several steps of one task share an anchor state. :func:`grouping_stats`
measures that on a rollout batch, with the same grouping rules as the estimators:

- ``step_group_size``: mean over rows of ``|{j : (task_j, s_j) = (task_i, s_i)}|`` (1 = every
  state unique, so GiGPO's step advantage is 0 everywhere and it reduces to GRPO);
- ``step_repeat_fraction``: the fraction of rows whose step group has ≥ 2 members;
- ``depth_none`` and ``depth_k`` for k = 0..K: the fraction of rows whose deepest HGPO level with
  ≥ 2 members is k (level k = the current state and the k states before it are identical, which
  needs ``step ≥ k``, as :func:`grouprl.advantages.hgpo.hgpo`); ``depth_none`` = a unique state.
  The levels are nested, so ``depth_0 + … + depth_K + depth_none = 1``.

One vectorised pass per level; no loop over rows.
"""

from __future__ import annotations

import torch

from grouprl.batch import RolloutBatch
from grouprl.validation import check_int

from .rows import prepare_rows
from .segments import pair_codes

__all__ = ["grouping_stats"]


def grouping_stats(batch: RolloutBatch, history_length: int = 2) -> dict[str, float]:
    """Step-group size, repeat fraction and HGPO depth fractions of ``batch`` (see module doc).

    ``history_length`` is HGPO's K (levels 0..K). Needs the ``state`` column."""
    check_int("history_length", history_length, 0)
    rows = prepare_rows(batch, ("state",), estimator="grouping_stats")
    n = rows.n
    out = {"step_group_size": 0.0, "step_repeat_fraction": 0.0, "depth_none": 0.0}
    out.update({f"depth_{k}": 0.0 for k in range(history_length + 1)})
    if n == 0:
        return out
    assert rows.state is not None
    num_states = max(rows.num_states, 1)
    order = rows.order
    state_s, step_s = rows.state[order], rows.step[order]
    key, num = pair_codes(rows.group[order], state_s, num_states)     # level 0: (task, s_t)
    size = torch.bincount(key, minlength=num)[key]
    out["step_group_size"] = float(size.double().mean())
    out["step_repeat_fraction"] = float((size >= 2).double().mean())
    depth = torch.where(size >= 2, 0, -1)                             # per sorted row
    member = torch.arange(n)
    for k in range(1, history_length + 1):                            # add s_{t−k}, steps t ≥ k
        deep = step_s[member] >= k
        member, key = member[deep], key[deep]
        if member.numel() == 0:
            break
        key, num = pair_codes(key, state_s[member - k], num_states)
        repeated = torch.bincount(key, minlength=num)[key] >= 2
        depth[member[repeated]] = k
    out["depth_none"] = float((depth == -1).double().mean())
    for k in range(history_length + 1):
        out[f"depth_{k}"] = float((depth == k).double().mean())
    return out
