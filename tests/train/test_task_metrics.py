"""Per-category episode metrics: exact values on a hand-built rollout, ignored rows, errors."""

from __future__ import annotations

import pytest
import torch

from grouprl.batch import Rollout, RolloutBatch
from grouprl.train.task_metrics import category_metrics


def rollout(traj, reward, success, category):
    """A rollout of len(traj) rows (token fields are placeholders) with per-row ``category``."""
    n = len(traj)
    batch = RolloutBatch(group_id=torch.zeros(n, dtype=torch.long), traj_id=traj,
                         step=torch.zeros(n, dtype=torch.long),
                         reward=torch.tensor(reward, dtype=torch.float32),
                         success=None if success is None else torch.tensor(success))
    ids = torch.zeros(n, 1, dtype=torch.long)
    out = Rollout(batch, ids, torch.ones_like(ids), ids, torch.ones_like(ids))
    out.category = category  # a dataclass field of Rollout once the rollout fills it
    return out


def test_exact_values_per_category():
    # Episodes (traj ids): 7 coin 2 rows won, return 1.5; 3 coin 1 row lost, return -0.5;
    # "s1" sorting 3 rows won, return 1.0 (rows interleaved with the others); 9 no category.
    traj = [7, 7, 3, "s1", "s1", 9, "s1"]
    reward = [0.5, 1.0, -0.5, 0.25, 0.25, 4.0, 0.5]
    success = [True, True, False, True, True, True, True]
    cats = ["coin", "coin", "coin", "sorting", "sorting", None, "sorting"]
    assert category_metrics(rollout(traj, reward, success, cats), "train") == {
        "train/success_rate/coin": 0.5,
        "train/episode_return/coin": 0.5,
        "train/episodes/coin": 2.0,
        "train/success_rate/sorting": 1.0,
        "train/episode_return/sorting": 1.0,
        "train/episodes/sorting": 1.0,
    }


def test_success_defaults_to_positive_return_and_keys_are_sorted():
    traj = [0, 1, 2, 2]
    cats = ["b", "a", "b", "b"]
    out = category_metrics(rollout(traj, [0.0, 2.0, -1.0, 3.0], None, cats), "eval")
    assert list(out) == ["eval/success_rate/a", "eval/episode_return/a", "eval/episodes/a",
                         "eval/success_rate/b", "eval/episode_return/b", "eval/episodes/b"]
    assert out["eval/success_rate/b"] == 0.5   # returns 0.0 (not > 0) and 2.0
    assert out["eval/episode_return/b"] == 1.0
    assert out["eval/success_rate/a"] == 1.0


def test_a_row_without_category_takes_its_episodes():
    out = category_metrics(rollout([0, 0], [1.0, 2.0], [False, False], [None, "x"]), "p")
    assert out == {"p/success_rate/x": 0.0, "p/episode_return/x": 3.0, "p/episodes/x": 1.0}


def test_no_category_gives_nothing():
    assert category_metrics(rollout([0, 1], [1.0, 0.0], None, [None, None]), "train") == {}
    assert category_metrics(rollout([], [], None, []), "train") == {}
    plain = rollout([0], [1.0], None, ["x"])
    del plain.category  # no category field (or the class default)
    assert category_metrics(plain, "train") == {}


def test_errors():
    with pytest.raises(ValueError, match="category: has 1 entries but the rollout has 2 rows"):
        category_metrics(rollout([0, 1], [1.0, 0.0], None, ["x"]), "train")
    with pytest.raises(ValueError, match="row 1 has category 'y' but another row of its "
                                         "episode has 'x'"):
        category_metrics(rollout([0, 0], [1.0, 0.0], None, ["x", "y"]), "train")
