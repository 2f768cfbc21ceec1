"""RolloutBatch: the per-step columns passed from rollout to the advantage estimators.

One row is one agent step (a single-turn completion is a trajectory with one step, step 0).
Columns are 1-D and of one length N; they may be tensors, NumPy arrays or Python sequences.
Identifier columns (``group_id``, ``traj_id``, ``agent_id``) may hold any hashable values (ints,
strings, UUIDs); they are factorized once into dense int64 codes. ``state`` and ``next_state`` are
exact int64 ids of the anchor observation (see :func:`state_ids`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RolloutBatch", "Rollout", "factorize", "state_ids", "to_hashable", "select_rows",
           "select_groups", "concat_rollouts", "episode_metrics", "pad_concat"]

Column = torch.Tensor | np.ndarray | Sequence[Any]


def to_hashable(obs: Any) -> Hashable:
    """Exact, hashable key of an observation.

    Strings, numbers and tuples are kept as they are (Python equality decides identity, as in the
    released verl-agent ``to_hashable``); lists become tuples, dicts sorted tuples of items, and
    arrays/tensors ``(dtype, shape, raw bytes)`` — unlike the reference's ``tuple(flatten())``,
    two arrays of different shape or dtype never merge.
    """
    if isinstance(obs, torch.Tensor):
        obs = obs.detach().cpu().numpy()
    if isinstance(obs, np.ndarray):
        return (obs.dtype.str, obs.shape, np.ascontiguousarray(obs).tobytes())
    if isinstance(obs, list | tuple):
        return tuple(to_hashable(o) for o in obs)
    if isinstance(obs, dict):
        return tuple(sorted((to_hashable(k), to_hashable(v)) for k, v in obs.items()))
    if isinstance(obs, set | frozenset):
        return frozenset(to_hashable(o) for o in obs)
    return obs


def state_ids(observations: Iterable[Any] | np.ndarray | torch.Tensor,
              vocabulary: dict[Hashable, int] | None = None) -> torch.Tensor:
    """Assign exact int64 ids to anchor observations (no lossy hashing).

    Equal observations get equal ids, different ones different ids. Pass the same ``vocabulary``
    dict to several calls (e.g. for ``state`` then ``next_state``) to share one id space; it maps
    the exact key (:func:`to_hashable`) to the id and is extended in place.

    Accepts a sequence of strings, tuples, numbers, lists or arrays, or one array/tensor whose
    first dimension indexes the observations (rows are compared bytewise, per dtype and shape).
    ``None`` is not an observation and raises ``ValueError``.
    """
    vocab: dict[Hashable, int] = {} if vocabulary is None else vocabulary
    if isinstance(observations, torch.Tensor):
        observations = observations.detach().cpu().numpy()
    if isinstance(observations, np.ndarray) and observations.dtype != object:
        if observations.ndim == 0:
            raise ValueError("state_ids: observations must be a sequence, got a 0-d array")
        n = observations.shape[0]
        flat = observations if observations.ndim == 1 else np.ascontiguousarray(
            observations.reshape(n, -1))
        uniq, first, inverse = np.unique(flat, axis=0 if flat.ndim > 1 else None,
                                         return_index=True, return_inverse=True)
        shape = observations.shape[1:]

        def key(row: np.ndarray) -> Hashable:
            if observations.ndim > 1:
                return (observations.dtype.str, shape, row.tobytes())
            return row.item()

        # Register unseen observations in order of first appearance, as the sequence path does.
        appearance = np.argsort(first, kind="stable")
        ids = np.empty(len(uniq), dtype=np.int64)
        for u in appearance:
            ids[u] = vocab.setdefault(key(uniq[u]), len(vocab))
        return torch.from_numpy(ids[inverse.reshape(-1)])
    out = []
    for i, obs in enumerate(observations):
        if obs is None:
            raise ValueError(f"state_ids: observation at row {i} is None; every row needs an "
                             "observation (use a sentinel string for terminal states)")
        out.append(vocab.setdefault(to_hashable(obs), len(vocab)))
    return torch.tensor(out, dtype=torch.int64)


def factorize(values: Column, name: str = "column") -> tuple[torch.Tensor, int]:
    """Dense int64 codes 0..K-1 for any 1-D column of hashable values, and K.

    Integer and boolean tensors/arrays go through ``torch.unique`` (sort-based); strings through
    ``np.unique``; other objects through one dict pass. Equal values get equal codes.
    """
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex():
            raise ValueError(f"{name}: identifiers must be integers, strings or hashable objects,"
                             f" got a {values.dtype} tensor; cast with .long()")
        uniq, codes = torch.unique(values.reshape(-1), return_inverse=True)
        return codes.to(torch.int64), int(uniq.numel())
    arr = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=object)
    if arr.size == 0:
        return torch.zeros(0, dtype=torch.int64), 0
    if arr.dtype == object and arr.ndim == 1:
        # Python sequences: take the typed fast path only when every value has one plain type
        # (np.asarray would otherwise turn [1, "1"] into two equal strings).
        kinds = {type(v) for v in arr.tolist()}
        if kinds <= {int, bool, np.int64, np.int32}:
            arr = arr.astype(np.int64)
        elif kinds == {str}:
            arr = arr.astype(str)
    if arr.ndim != 1:
        raise ValueError(f"{name}: columns must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "biu":
        return factorize(torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64))), name)
    if arr.dtype.kind in "US":
        uniq, codes = np.unique(arr.reshape(-1), return_inverse=True)
        return torch.from_numpy(codes.astype(np.int64)), len(uniq)
    if arr.dtype.kind == "f":
        raise ValueError(f"{name}: identifiers must be integers, strings or hashable objects, "
                         "got floats; pass integer ids")
    table: dict[Hashable, int] = {}
    codes_list = [table.setdefault(to_hashable(v), len(table)) for v in arr.tolist()]
    return torch.tensor(codes_list, dtype=torch.int64), len(table)


def as_boolean(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` as a bool tensor; a non-bool tensor must hold only 0/1 (the error names the row)."""
    if t.dtype != torch.bool:
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"{name}: must be boolean (0/1); row {row} holds {t[row].item()}")
    return t.to(torch.bool)


def _as_tensor(values: Column, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        t = torch.as_tensor(values) if not isinstance(values, torch.Tensor) else values
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: cannot convert to a {dtype} tensor ({err})") from None
    if dtype == torch.bool:
        return as_boolean(t, name).detach().cpu().reshape(t.shape)
    if dtype == torch.int64 and t.is_floating_point():
        bad = t != torch.round(t)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"{name}: must hold integers; row {row} holds {t[row].item()}")
    return t.detach().cpu().to(dtype)


@dataclass
class RolloutBatch:
    """Per-step columns of a batch of grouped rollouts (one row per agent step).

    Attributes:
        group_id: rollouts of the same task from the same initial state share a group.
        traj_id: unique per trajectory (a trajectory lies in exactly one group).
        step: 0..T-1 within a trajectory, contiguous, each once.
        reward: the environment reward of that step.
        state: exact int64 id of the anchor observation before the step (GiGPO, HGPO, GraphGPO).
        next_state: exact int64 id of the anchor observation after the step (GraphGPO); it shares
            the id space of ``state``.
        success: per row, whether the trajectory succeeded (constant within a trajectory);
            default ``episode return > 0`` as the released GraphGPO code.
        invalid: the action at that step was invalid (receives ``invalid_penalty``).
        agent_id: which agent acted (multi-agent systems, Dr. MAS agent-wise normalisation).
    """

    group_id: Column
    traj_id: Column
    step: Column
    reward: Column
    state: Column | None = None
    next_state: Column | None = None
    success: Column | None = None
    invalid: Column | None = None
    agent_id: Column | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(_length(self.reward, "reward"))


def _length(col: Column, name: str) -> int:
    shape = getattr(col, "shape", None)
    if shape is not None:
        if len(shape) != 1:
            raise ValueError(f"{name}: columns must be 1-D, got shape {tuple(shape)}")
        return int(shape[0])
    try:
        return len(col)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: expected a 1-D column (tensor, array or sequence), "
                         f"got {type(col).__name__}") from None


# --------------------------------------------------------------------------- the row container

def pad_concat(parts: Sequence[torch.Tensor], width: int, value: float, left: bool) -> torch.Tensor:
    """Concatenate (n_i, w_i) tensors along rows, padding each to ``width`` on the left/right."""
    padded = [F.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]), value=value)
              for p in parts]
    return torch.cat(padded, 0) if padded else torch.zeros(0, width)


def episode_metrics(ret: torch.Tensor, length: torch.Tensor, won: torch.Tensor,
                    invalid: torch.Tensor) -> dict[str, float]:
    """Success rate, mean return and length of the kept episodes; invalid-row rate; row count."""
    e = ret.numel()
    return {"success_rate": float(won.float().mean()) if e else 0.0,
            "episode_return": float(ret.float().mean()) if e else 0.0,
            "episode_length": float(length.float().mean()) if e else 0.0,
            "invalid_rate": float(invalid.float().mean()) if invalid.numel() else 0.0,
            "rows": float(invalid.numel())}


_LEFT, _RIGHT, _ROW, _EPISODE, _LIST = "left", "right", "row", "episode", "list"


def _kind(kind: str, default: Any = None, *, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


@dataclass
class Rollout:
    """The one row container from rollout to learner (DESIGN.md ``batch.py``).

    Row ``i`` of every per-row field is row ``i`` of ``batch`` (one agent step, or one
    completion of a single-turn task). Fields by kind — each field's ``metadata["kind"]`` tells
    :func:`select_rows` and :func:`concat_rollouts` how to cut and join it:

    - ``left`` / ``right``: (N, P) left-padded prompt and (N, R) right-padded response tensors;
    - ``row``: (N, ...) tensors — ``truncated`` and the columns added downstream:
      ``advantages`` (N,), ``old_logp`` and ``ref_logp`` (N, R) (behaviour and reference
      log-probs, filled by the recipe when the update needs them);
    - ``episode``: (E,) tensors, one entry per kept episode;
    - ``list``: Python lists of length N (decoded replies, env step extras, task categories).

    The routing columns (``expert``, ``expert_logp``, ``router_obs``, ``router_goal``) are set
    by a row-routed policy (:mod:`grouprl.train.pamoe`) and ``None`` otherwise.
    """

    batch: RolloutBatch
    prompt_ids: torch.Tensor = _kind(_LEFT)        # (N, P) left-padded
    prompt_mask: torch.Tensor = _kind(_LEFT)       # (N, P)
    response_ids: torch.Tensor = _kind(_RIGHT)     # (N, R) right-padded
    response_mask: torch.Tensor = _kind(_RIGHT)    # (N, R)
    logprobs: torch.Tensor | None = _kind(_RIGHT)  # (N, R) sampling log-probs (0 on padding)
    episode_return: torch.Tensor | None = _kind(_EPISODE)   # (E,) per kept episode
    episode_length: torch.Tensor | None = _kind(_EPISODE)   # (E,)
    episode_won: torch.Tensor | None = _kind(_EPISODE)      # (E,) bool
    episode_group: torch.Tensor | None = _kind(_EPISODE)    # (E,) group id of each episode
    responses: list[str] = _kind(_LIST, factory=list)       # decoded reply of each row
    metrics: dict[str, float] = field(default_factory=dict)
    truncated: torch.Tensor | None = _kind(_ROW)   # (N,) bool: the generation hit the limit
    extras: list[dict | None] = _kind(_LIST, factory=list)  # env step info["extra"] per row
    advantages: torch.Tensor | None = _kind(_ROW)  # (N,) from the estimator
    old_logp: torch.Tensor | None = _kind(_RIGHT)  # (N, R) behaviour log-probs (recomputed)
    ref_logp: torch.Tensor | None = _kind(_RIGHT)  # (N, R) reference log-probs (KL)
    category: list[str | None] = _kind(_LIST, factory=list)  # task category of each row
    observations: list[str] = _kind(_LIST, factory=list)    # the env observation each row saw
    expert: torch.Tensor | None = _kind(_ROW)       # (N,) routed LoRA expert (PA-MoE)
    expert_logp: torch.Tensor | None = _kind(_ROW)  # (N,) its rollout log-prob log q(e)
    router_obs: torch.Tensor | None = _kind(_ROW)   # (N, d) router feature of the observation
    router_goal: torch.Tensor | None = _kind(_ROW)  # (N, d) router feature of the goal

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def column(self, name: str) -> torch.Tensor:
        """A per-row tensor by name: a row field (``advantages``, ...) or a ``batch`` column
        (``group_id``, ``success``, ...) as a tensor."""
        value = getattr(self, name, None) if name != "batch" else None
        if value is None:
            value = getattr(self.batch, name, None)
        if value is None:
            raise ValueError(f"rows.{name}: not set; this update needs the per-row column "
                             f"{name!r} (e.g. single-turn rollouts carry group_id and success)")
        return torch.as_tensor(value)

    def with_columns(self, **columns: torch.Tensor | None) -> Rollout:
        """A shallow copy with the given fields replaced (e.g. ``advantages=adv``)."""
        return dataclasses.replace(self, **columns)


_BATCH_COLUMNS = ("group_id", "traj_id", "step", "reward", "state", "next_state", "success",
                  "invalid", "agent_id")


def _list_of(r: Rollout, name: str) -> list:
    values = getattr(r, name)
    return values if len(values) == len(r) else [None] * len(r)


def _cut(column: Column | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if column is None else torch.as_tensor(column)[idx]


def select_rows(rollout: Rollout, rows: torch.Tensor, episodes: torch.Tensor | None = None
                ) -> Rollout:
    """The rows ``rows`` (bool mask or index) and episodes ``episodes`` of ``rollout``; every
    field is cut by its kind (see :class:`Rollout`), metrics are copied."""
    idx = torch.nonzero(rows).flatten() if rows.dtype == torch.bool else rows.long()
    ids = idx.tolist()
    b = rollout.batch
    batch = RolloutBatch(**{c: _cut(getattr(b, c), idx) for c in _BATCH_COLUMNS})
    out: dict[str, Any] = {"batch": batch, "metrics": dict(rollout.metrics)}
    for f in dataclasses.fields(Rollout):
        kind, value = f.metadata.get("kind"), getattr(rollout, f.name)
        if kind is None or value is None:
            continue
        if kind == _EPISODE:
            out[f.name] = value if episodes is None else value[episodes]
        elif kind == _LIST:
            values = _list_of(rollout, f.name)
            out[f.name] = [values[k] for k in ids]
        else:
            out[f.name] = value[idx]
    return Rollout(**out)


def concat_rollouts(parts: Sequence[Rollout], pad_token_id: int = 0) -> Rollout:
    """One rollout from several (dynamic sampling keeps groups from repeated tries): rows and
    episodes in order, token tensors re-padded to the widest part; episode metrics recomputed,
    failure counts summed."""
    if not parts:
        raise ValueError("concat_rollouts: no rollouts to concatenate")
    first = parts[0].batch
    batch = RolloutBatch(**{c: None if getattr(first, c) is None else
                            torch.cat([torch.as_tensor(getattr(r.batch, c)) for r in parts])
                            for c in _BATCH_COLUMNS})
    out: dict[str, Any] = {"batch": batch}
    for f in dataclasses.fields(Rollout):
        kind = f.metadata.get("kind")
        if kind is None:
            continue
        if kind == _LIST:
            out[f.name] = [v for r in parts for v in _list_of(r, f.name)]
            continue
        values = [getattr(r, f.name) for r in parts]
        if f.name == "truncated":
            values = [v if v is not None else torch.zeros(len(r), dtype=torch.bool)
                      for v, r in zip(values, parts)]
        if any(v is None for v in values):
            continue
        if kind in (_LEFT, _RIGHT):
            pad = pad_token_id if f.name.endswith("_ids") else 0
            width = max(v.shape[1] for v in values)
            out[f.name] = pad_concat(values, width, pad, left=kind == _LEFT)
        else:
            out[f.name] = torch.cat(values)
    metrics = {k: sum(r.metrics[k] for r in parts) for k in
               ("truncated_generations", "truncated_prompts", "failed_trajectories",
                "nonfinite_reward_trajectories") if all(k in r.metrics for r in parts)}
    metrics.update(episode_metrics(out["episode_return"], out["episode_length"],
                                   out["episode_won"], torch.as_tensor(batch.invalid)))
    return Rollout(**out, metrics=metrics)


def select_groups(rollout: Rollout, groups: torch.Tensor) -> Rollout:
    """The rows and episodes of the given group ids only (dynamic sampling); episode metrics
    are recomputed for the kept episodes."""
    rows = torch.isin(torch.as_tensor(rollout.batch.group_id), groups)
    out = select_rows(rollout, rows, torch.isin(rollout.episode_group, groups))
    out.metrics.update(episode_metrics(out.episode_return, out.episode_length, out.episode_won,
                                       torch.as_tensor(out.batch.invalid)))
    return out
