"""Per-task (category) episode metrics of a rollout: multi-task training reports how each task does.

A multi-task env (:class:`grouprl.envs.multitask.MultiTaskEnv`, or TextWorldExpress with a list
of games) names each episode's task in its reset info ``"category"``; the rollout carries it per
row (``Rollout.category``: the category of the row's episode, ``None`` for none). For each
category ``c`` over the episodes E_c of the rollout (an episode: the rows sharing a
``batch.traj_id``):

* ``{prefix}/success_rate/{c}`` = (1/|E_c|) Σ_{e ∈ E_c} success(e), with ``success(e)`` the
  ``batch.success`` of e's rows (constant within an episode; any true row counts), or, when
  ``batch.success`` is not set, ``return(e) > 0`` (the :class:`~grouprl.batch.RolloutBatch`
  default);
* ``{prefix}/episode_return/{c}`` = (1/|E_c|) Σ_{e ∈ E_c} return(e), with
  ``return(e) = Σ_{rows r of e} batch.reward[r]``;
* ``{prefix}/episodes/{c}`` = |E_c|.
"""

from __future__ import annotations

from typing import Any

import torch

from grouprl.batch import Rollout, factorize

__all__ = ["category_metrics", "episode_categories"]


def episode_categories(categories: list[Any], episode: torch.Tensor, num_episodes: int
                       ) -> list[str | None]:
    """The category of each episode (code ``episode[r]`` of row ``r``) from the per-row
    ``categories``: the one of its rows that are not ``None`` (``None`` when all are);
    ``ValueError`` when the rows of one episode disagree."""
    out: list[str | None] = [None] * num_episodes
    for row, (cat, e) in enumerate(zip(categories, episode.tolist())):
        if cat is None:
            continue
        if out[e] is not None and out[e] != cat:
            raise ValueError(f"category: row {row} has category {cat!r} but another row of its "
                             f"episode has {out[e]!r}; an episode has one category")
        out[e] = str(cat)
    return out


def category_metrics(rollout: Rollout, prefix: str) -> dict[str, float]:
    """Success rate, mean episode return and episode count per category (module docstring).

    Rows whose category is ``None`` are ignored; ``{}`` when no row has a category (or the
    rollout has no ``category`` field). Keys are sorted by category.
    """
    categories = getattr(rollout, "category", None)
    if not categories or all(c is None for c in categories):
        return {}
    b = rollout.batch
    n = len(b)
    if len(categories) != n:
        raise ValueError(f"category: has {len(categories)} entries but the rollout has {n} rows; "
                         "give one category per row")
    episode, num_episodes = factorize(b.traj_id, "traj_id")
    reward = torch.as_tensor(b.reward, dtype=torch.float64).reshape(-1)
    returns = torch.zeros(num_episodes, dtype=torch.float64).index_add_(0, episode, reward)
    if b.success is None:
        won = returns > 0
    else:
        row_won = torch.as_tensor(b.success).reshape(-1).to(torch.float64)
        won = torch.zeros(num_episodes, dtype=torch.float64).index_add_(0, episode, row_won) > 0
    cat_of = episode_categories(list(categories), episode, num_episodes)
    out: dict[str, float] = {}
    for cat in sorted({c for c in cat_of if c is not None}):
        members = torch.tensor([c == cat for c in cat_of], dtype=torch.bool)
        count = int(members.sum())
        out[f"{prefix}/success_rate/{cat}"] = float(won[members].double().mean())
        out[f"{prefix}/episode_return/{cat}"] = float(returns[members].mean())
        out[f"{prefix}/episodes/{cat}"] = float(count)
    return out
