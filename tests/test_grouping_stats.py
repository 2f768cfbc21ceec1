"""grouping_stats: hand-worked example, a slow reference from the definitions, invariants."""

from __future__ import annotations

import random

import pytest
import torch

from grouprl.advantages import RolloutBatch, grouping_stats


def _slow(group, traj, step, state, K):
    """Loops over rows: sizes of (task, s_t) groups and the deepest context level with ≥ 2."""
    n = len(group)
    hist = {}
    for i in range(n):
        hist[(traj[i], step[i])] = state[i]

    def context(i, k):
        return tuple(hist[(traj[i], step[i] - j)] for j in range(k + 1))

    sizes, depths = [], []
    for i in range(n):
        sizes.append(sum(1 for j in range(n) if group[j] == group[i] and state[j] == state[i]))
        d = -1
        for k in range(K + 1):
            if step[i] < k:
                break
            c = sum(1 for j in range(n) if group[j] == group[i] and step[j] >= k
                    and context(j, k) == context(i, k))
            if c >= 2:
                d = k
        depths.append(d)
    out = {"step_group_size": sum(sizes) / n,
           "step_repeat_fraction": sum(s >= 2 for s in sizes) / n,
           "depth_none": depths.count(-1) / n}
    out.update({f"depth_{k}": depths.count(k) / n for k in range(K + 1)})
    return out


def test_hand_example():
    # one task, two trajectories: A→B→C and A→B→D; a second task with one unique state E.
    batch = RolloutBatch(group_id=[0, 0, 0, 0, 0, 0, 1], traj_id=[0, 0, 0, 1, 1, 1, 2],
                         step=[0, 1, 2, 0, 1, 2, 0], reward=[0.0] * 7,
                         state=[10, 11, 12, 10, 11, 13, 14])
    s = grouping_stats(batch, history_length=2)
    # sizes: A 2, B 2, C 1, A 2, B 2, D 1, E 1 → 11/7; repeated rows 4/7
    assert s["step_group_size"] == pytest.approx(11 / 7)
    assert s["step_repeat_fraction"] == pytest.approx(4 / 7)
    # A at step 0: depth 0 (level 1 needs step ≥ 1); B at step 1: (A, B) shared → depth 1
    assert s["depth_0"] == pytest.approx(2 / 7)
    assert s["depth_1"] == pytest.approx(2 / 7)
    assert s["depth_2"] == 0.0
    assert s["depth_none"] == pytest.approx(3 / 7)


def test_context_split_by_history():
    # same current state X reached from different previous states: depth 0 only
    batch = RolloutBatch(group_id=[0] * 4, traj_id=[0, 0, 1, 1], step=[0, 1, 0, 1],
                         reward=[0.0] * 4, state=[1, 3, 2, 3])
    s = grouping_stats(batch, history_length=1)
    assert s["depth_0"] == pytest.approx(0.5) and s["depth_1"] == 0.0
    assert s["depth_none"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference_and_sums_to_one(seed):
    rng = random.Random(seed)
    group, traj, step, state = [], [], [], []
    t = 0
    for g in range(rng.randint(1, 4)):
        for _ in range(rng.randint(1, 5)):
            for s in range(rng.randint(1, 6)):
                group.append(g)
                traj.append(t)
                step.append(s)
                state.append(rng.randint(0, 3))
            t += 1
    perm = list(range(len(group)))
    rng.shuffle(perm)   # row order must not matter
    cols = [[c[i] for i in perm] for c in (group, traj, step, state)]
    K = rng.randint(0, 4)
    fast = grouping_stats(RolloutBatch(group_id=cols[0], traj_id=cols[1], step=cols[2],
                                       reward=[0.0] * len(perm), state=cols[3]), K)
    slow = _slow(*cols, K)
    assert fast.keys() == slow.keys()
    for k in slow:
        assert fast[k] == pytest.approx(slow[k]), k
    assert sum(v for k, v in fast.items() if k.startswith("depth_")) == pytest.approx(1.0)


def test_errors_and_empty():
    with pytest.raises(ValueError, match="state"):
        grouping_stats(RolloutBatch(group_id=[0], traj_id=[0], step=[0], reward=[1.0]))
    with pytest.raises(ValueError, match="history_length"):
        grouping_stats(RolloutBatch(group_id=[0], traj_id=[0], step=[0], reward=[1.0],
                                    state=[0]), -1)
    none = torch.zeros(0, dtype=torch.long)
    empty = grouping_stats(RolloutBatch(group_id=none, traj_id=none, step=none,
                                        reward=torch.zeros(0), state=none), 1)
    assert empty == {"step_group_size": 0.0, "step_repeat_fraction": 0.0, "depth_none": 0.0,
                     "depth_0": 0.0, "depth_1": 0.0}
