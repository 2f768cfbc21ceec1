"""Finding 2 of issue 13: a NaN or inf reward never crashes training — the trajectory is dropped
and counted; a batch with nothing left skips the update and is counted."""

from __future__ import annotations

import math

import torch

from grouprl.envs import SokobanEnv, register_env
from grouprl.envs.sokoban import SokobanLevel
from grouprl.recipes import train
from grouprl.rewards.stage import RewardStage
from grouprl.train import load_config
from grouprl.train.metrics import read_metrics

EASY = "#####\n#___#\n#OXP#\n#___#\n#####"


class NaNSokoban(SokobanEnv):
    """Sokoban whose every step of an odd seed returns a non-finite reward (NaN or inf)."""

    def reset(self, seed=None):
        self._bad = seed is not None and seed % 2 == 1
        self._kind = float("nan") if seed is not None and seed % 4 == 1 else float("inf")
        return self.reset_to_level(SokobanLevel.from_text(EASY))

    def step(self, action):
        obs, reward, done, info = super().step(action)
        return obs, (self._kind if self._bad else reward), done, info


class AlwaysNaNSokoban(NaNSokoban):
    def reset(self, seed=None):
        out = super().reset(seed)
        self._bad, self._kind = True, float("nan")
        return out


register_env("test_nan_sokoban", NaNSokoban, overwrite=True)
register_env("test_always_nan_sokoban", AlwaysNaNSokoban, overwrite=True)

TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
        "model.tiny.tokenizer_episodes=10", "logging.progress=false", "threads=1",
        "rollout.groups_per_batch=2", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "eval.episodes=8", "env.max_steps=3", "bc.episodes=6", "bc.epochs=1", "iterations=3",
        "eval.every=1", "env.kwargs={dim_room: [5, 5]}"]


def _finite(row: dict) -> bool:
    return all(math.isfinite(v) for v in row.values() if isinstance(v, float))


def test_nonfinite_env_rewards_drop_the_trajectory_and_training_goes_on(tmp_path):
    cfg = load_config(None, [*TINY, "env.name=test_nan_sokoban", f"run_dir={tmp_path / 'r'}"])
    result = train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    its = [r for r in rows if "train/rows" in r]
    assert len(its) == 3 and result.iterations == 3
    dropped = [r["train/nonfinite_reward_trajectories"] for r in its]
    assert sum(dropped) > 0 and all(d % 4 == 0 for d in dropped), dropped  # whole groups of 4
    assert its[-1]["train/nonfinite_reward_trajectories_total"] == sum(dropped)
    assert all(r["train/failed_trajectories"] == 0 for r in its)   # not counted as crashes
    assert all(_finite(r) for r in rows), [k for r in rows for k, v in r.items()
                                           if isinstance(v, float) and not math.isfinite(v)]
    evals = [r for r in rows if "eval/success_rate" in r]
    assert evals and all(r["eval/nonfinite_reward_trajectories"] > 0 for r in evals)


def test_a_batch_with_nothing_left_skips_the_update_and_is_counted(tmp_path):
    cfg = load_config(None, [*TINY, "env.name=test_always_nan_sokoban",
                             f"run_dir={tmp_path / 'r'}"])
    train(cfg, echo=lambda s: None)
    its = [r for r in read_metrics(cfg.run_dir) if "train/rows" in r]
    assert [r["train/rows"] for r in its] == [0.0, 0.0, 0.0]
    assert [r["train/empty_batches"] for r in its] == [1.0, 1.0, 1.0]
    assert its[-1]["train/empty_batches_total"] == 3.0
    assert all(r["actor/updates"] == 0.0 for r in its)


def test_reward_stage_drops_rows_whose_shaped_reward_is_not_finite():
    from grouprl.batch import Rollout, RolloutBatch

    n = 4

    class NaNShaper:
        name, needs_well_formed = "nan", False

        def __call__(self, ctx):
            return torch.tensor([1.0, float("nan"), 0.0, float("inf")], dtype=torch.float64)

        def metrics(self):
            return {}

    stage = RewardStage(None, {})
    stage.shaper = NaNShaper()
    batch = RolloutBatch(group_id=torch.zeros(n, dtype=torch.long), traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.long), reward=torch.zeros(n),
                         state=torch.arange(n), success=torch.tensor([1, 0, 0, 1]).bool())
    r = Rollout(batch, torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long),
                torch.ones(n, 3, dtype=torch.long), torch.ones(n, 3, dtype=torch.long),
                torch.zeros(n, 3), torch.zeros(n), torch.ones(n, dtype=torch.long),
                torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                responses=["a", "b", "c", "d"], truncated=torch.zeros(n, dtype=torch.bool))
    out, m = stage.apply(r, iteration=0)
    assert m["reward/nonfinite_dropped"] == 2.0
    assert out.responses == ["a", "c"] and out.batch.reward.tolist() == [1.0, 0.0]
    assert out.episode_return.tolist() == [1.0, 0.0] and len(out) == 2
