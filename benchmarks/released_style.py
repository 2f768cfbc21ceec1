"""GiGPO computed with the cost structure of the released research code (spec §9.1), for timing.

Written from the spec's description of the released ``gigpo/core_gigpo.py`` path, not copied:
step returns per trajectory via ``np.where`` over an object array of trajectory uids and a
per-row ``np.where`` recombination (O(N²)); episode and step normalisation with a Python loop over
rows, 0-d torch tensors per row and ``torch.tensor(list)`` per group; anchor grouping with a
per-uid ``np.where``. Semantics are compat="reference" (it is checked against the vectorised code
before it is timed).
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import numpy as np
import torch


def released_style_gigpo(uids: np.ndarray, traj_uids: np.ndarray, rewards: np.ndarray,
                         anchors: np.ndarray, invalid: np.ndarray, *, gamma: float = 0.95,
                         step_weight: float = 1.0, mode: str = "mean_std_norm",
                         penalty: float = 0.1, epsilon: float = 1e-6) -> torch.Tensor:
    """Rows must be environment-major and time-ascending, as the released trainer produces."""
    n = len(rewards)
    # Discounted returns: per trajectory, then a per-row search for the row's position: O(N²).
    per_traj = {}
    for t in np.unique(traj_uids):
        idx = np.where(traj_uids == t)[0]
        r = rewards[idx].astype(np.float32)
        out = np.zeros_like(r)
        running = np.float32(0.0)
        for k in range(len(r) - 1, -1, -1):
            running = r[k] + np.float32(gamma) * running
            out[k] = running
        per_traj[t] = out
    step_rewards = np.zeros(n, dtype=np.float32)
    for i in range(n):
        idx = np.where(traj_uids == traj_uids[i])[0]
        step_rewards[i] = per_traj[traj_uids[i]][int(np.where(idx == i)[0][0])]
    step_rewards = torch.tensor(step_rewards)
    # Episode scores, then the invalid-action penalty on rows (per-row loop).
    episode = defaultdict(float)
    for i in range(n):
        episode[traj_uids[i]] += float(rewards[i])
    scores = torch.tensor([episode[traj_uids[i]] for i in range(n)], dtype=torch.float32)
    for i in range(n):
        if invalid[i]:
            scores[i] = scores[i] - penalty
            step_rewards[i] = step_rewards[i] - penalty

    def normalise(values: torch.Tensor, keys: np.ndarray, singleton_raw: bool) -> torch.Tensor:
        values = values.clone()
        groups = defaultdict(list)
        for i in range(n):
            groups[keys[i]].append(values[i])
        stats = {}
        for key, members in groups.items():
            if len(members) == 1:
                stats[key] = (torch.tensor(0.0), torch.tensor(1.0)) if singleton_raw else None
            else:
                t = torch.tensor(members)
                stats[key] = (torch.mean(t), torch.std(t))
        for i in range(n):
            s = stats[keys[i]]
            if s is None:
                values[i] = 0.0
            elif mode == "mean_norm":
                values[i] = values[i] - s[0]
            else:
                values[i] = (values[i] - s[0]) / (s[1] + epsilon)
        return values

    a_episode = normalise(scores, uids, singleton_raw=True)
    # Anchor-state grouping per uid, one fresh group uuid per distinct anchor.
    step_group = np.empty(n, dtype=object)
    for u in np.unique(uids):
        idx = np.where(uids == u)[0]
        seen = {}
        for i in idx:
            step_group[i] = seen.setdefault(anchors[i], str(uuid.uuid4()))
    a_step = normalise(step_rewards, step_group, singleton_raw=False)
    return a_episode + step_weight * a_step
