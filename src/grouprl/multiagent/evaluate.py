"""pass@k and avg@k of a team (Dr. MAS ``compute_pass_at_k_and_avg_at_k``; spec §1.7).

Each validation task is run k times (``val_n = k``); with ``s_{j,1..k}`` the success flags of
task j among J tasks::

    pass@k = (1/J) Σ_j [max_i s_{j,i} = 1]        avg@k = (1/J) Σ_j (1/k) Σ_i s_{j,i}

Tasks are keyed by their group id (the task uid), so the n rollouts of one task count together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from .rows import Episode

__all__ = ["pass_and_avg_at_k", "episode_successes"]


def pass_and_avg_at_k(successes: Mapping[Hashable, Sequence[bool | float]]) -> dict[str, float]:
    """``{"pass@k": …, "avg@k": …, "k": k}`` from each task's k success flags.

    Every task must have the same number k >= 1 of runs (``ValueError`` otherwise).
    """
    if not successes:
        raise ValueError("successes: no tasks")
    counts = {len(v) for v in successes.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"successes: every task needs the same number k >= 1 of runs, got "
                         f"{sorted(counts)}")
    k = counts.pop()
    flags = [[float(bool(s)) for s in v] for v in successes.values()]
    return {"pass@k": sum(max(f) for f in flags) / len(flags),
            "avg@k": sum(sum(f) / k for f in flags) / len(flags), "k": float(k)}


def episode_successes(episodes: Sequence[Episode]) -> dict[int, list[bool]]:
    """Success flags per task group, in trajectory order (input of :func:`pass_and_avg_at_k`)."""
    out: dict[int, list[bool]] = {}
    for e in sorted(episodes, key=lambda e: e.traj_id):
        out.setdefault(e.group_id, []).append(e.won)
    return out
