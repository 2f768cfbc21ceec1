"""Reasoning mode in the trainer: single-turn RL on built-in arithmetic, reward shaping, config
errors, DOT truncation and the shaper state across resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from grouprl.batch import Rollout, RolloutBatch
from grouprl.recipes import train
from grouprl.rewards.length import grpo_lambda_reward, hapo_reward
from grouprl.rewards.stage import RewardStage
from grouprl.rewards.verify import VerifyResult
from grouprl.train import ConfigError, load_config
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.checks import check_rl_config as validate_config
from grouprl.train.metrics import read_metrics

TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=48", "model.tiny.num_layers=2",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=96", "model.tiny.tokenizer_episodes=16",
        "logging.progress=false", "threads=1"]
# six one-digit problems, evaluated on the same problems (the test is about learning, not
# generalisation); behaviour cloning is stopped early so RL has room to improve
SIX = ["env.kwargs={dataset: 'builtin:arithmetic', difficulty: [1], size: 6}",
       "eval.env_kwargs={split: train}", "rollout.groups_per_batch=4", "rollout.group_size=8",
       "rollout.max_new_tokens=40"]
WARM = ["bc.episodes=12", "bc.epochs=30", "bc.batch_size=4", "bc.lr=3e-3"]


def reasoning_config(tmp_path: Path, *extra: str, recipe: str = "configs/reasoning_grpo.yaml"):
    return load_config(recipe, [*TINY, *SIX, f"run_dir={tmp_path / 'run'}", *extra])


def test_grpo_raises_accuracy_on_builtin_arithmetic(tmp_path):
    cfg = reasoning_config(tmp_path, *WARM, "iterations=16", "optim.lr=3e-4", "eval.every=0",
                           "eval.episodes=96")
    result = train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    acc = [r["train/accuracy"] for r in rows if "train/accuracy" in r]
    assert len(acc) == 16
    assert sum(acc[-5:]) / 5 > sum(acc[:5]) / 5 + 0.1, acc
    assert result.success_after > result.success_before + 0.05, (result.success_before,
                                                                 result.success_after)
    final = rows[-1]
    for key in ("eval/accuracy", "eval/response_length_mean", "eval/response_length_p50",
                "eval/response_length_p90", "eval/response_length_p99", "eval/truncated_rate"):
        assert key in final
    assert final["eval/response_length_p50"] <= final["eval/response_length_p90"] \
        <= final["eval/response_length_max"]
    assert all(r.get("train/verifier_failures", 0) == 0 for r in rows)


@pytest.mark.parametrize("recipe", ["kimi", "grpo_lambda", "dler", "hapo", "laser_d", "dot",
                                    "drpo", "canon", "kpo"])
def test_every_reasoning_recipe_runs_an_iteration(tmp_path, recipe):
    path = f"configs/reasoning_{recipe}.yaml"
    extra = ["bc.episodes=4", "bc.epochs=1", "iterations=2", "eval.episodes=4",
             "eval.every=0", "save_every=1"]
    if recipe == "laser_d":
        extra.append("reward.options.monitor_prompts=2")
    cfg = reasoning_config(tmp_path, *extra, recipe=path)
    train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    it = [r for r in rows if "train/accuracy" in r]
    assert len(it) == 2 and all(r["train/skipped_updates"] == 0 for r in it)
    if recipe in ("kimi", "grpo_lambda", "dler", "hapo", "laser_d"):
        assert any(k.startswith(f"reward/{recipe}/") for k in it[-1]), sorted(it[-1])


def _state(run_dir) -> dict:
    from grouprl.train.checkpoint import read_checkpoint_state

    return read_checkpoint_state(latest_checkpoint(run_dir))


def test_hapo_history_is_saved_and_restored_on_resume(tmp_path):
    cfg = reasoning_config(tmp_path, *WARM, "iterations=2", "eval.episodes=4", "eval.every=0",
                           "save_every=1", recipe="configs/reasoning_hapo.yaml")
    train(cfg, echo=lambda s: None)
    state = _state(cfg.run_dir)
    history = state["reward_stage"]["rewards"]["shaper"]["history"]["value"]
    assert history, "HAPO's history must be in the checkpoint"
    longer = dataclasses.replace(cfg, iterations=3)
    train(longer, resume=True, echo=lambda s: None)
    after = _state(cfg.run_dir)["reward_stage"]["rewards"]["shaper"]["history"]["value"]
    # restored, then updated: every prompt seen before is still there, never longer (min mode)
    assert set(history) <= set(after)
    assert all(after[k] <= history[k] for k in history)


@pytest.mark.parametrize("overrides, message", [
    (["reward.shaping=grpo_lambda"], r"reward.options: alpha: required"),
    (["reward.shaping=kimi"], r"reward.options: weight: required"),
    (["reward.shaping=laser"], r"reward.options: target: required"),
    (["reward.shaping=overlong"], r"reward.options: buffer: required"),
    (["reward.shaping=hapo", "reward.options={wieght: 1}"], r"reward.options: wieght"),
    (["reward.shaping=nope"], r"reward.shaping: 'nope' is not accepted"),
    (["reward.shaping=dler", "env.max_steps=3"], r"reward.shaping: needs single-turn"),
    (["algorithm.loss=drpo", "algorithm.loss_options={tau: -1}"], r"algorithm.loss_options: tau"),
    (["rollout.dot_truncation={alpha: 0}"], r"rollout.dot_truncation: alpha"),
    (["rollout.oversampling={window: 5}"], r"rollout.oversampling: .*dynamic_sampling=true"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    cfg = reasoning_config(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


# ------------------------------------------------------------------ the reward stage on its own

def _rollout(correct, length, group, texts=None, gold="7") -> Rollout:
    n = len(correct)
    width = max(length)
    mask = (torch.arange(width)[None, :] < torch.tensor(length)[:, None]).long()
    batch = RolloutBatch(group_id=torch.tensor(group), traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.long),
                         reward=torch.tensor(correct, dtype=torch.float32),
                         state=torch.tensor(group), next_state=torch.tensor(group) + 100,
                         success=torch.tensor(correct, dtype=torch.bool),
                         invalid=torch.zeros(n, dtype=torch.bool))
    return Rollout(batch=batch, prompt_ids=torch.ones(n, 2, dtype=torch.long),
                   prompt_mask=torch.ones(n, 2, dtype=torch.long),
                   response_ids=torch.full((n, width), 5) * mask, response_mask=mask,
                   logprobs=-torch.rand(n, width) * mask,
                   episode_return=torch.tensor(correct, dtype=torch.float32),
                   episode_length=torch.ones(n, dtype=torch.long),
                   episode_won=torch.tensor(correct, dtype=torch.bool),
                   episode_group=torch.tensor(group), responses=texts or [""] * n,
                   truncated=torch.zeros(n, dtype=torch.bool),
                   extras=[{"key": g, "gold": gold, "reason": "ok" if c else "wrong"}
                           for g, c in zip(group, correct)])


def test_shaped_rewards_replace_step_rewards_and_returns():
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    length = [10, 20, 30, 40, 15, 25, 10, 50]
    group = [0, 0, 0, 0, 1, 1, 1, 1]
    stage = RewardStage("grpo_lambda", {"alpha": 0.2, "top_fraction": 0.5})
    out, metrics = stage.apply(_rollout(correct, length, group), iteration=0)
    want = grpo_lambda_reward(torch.tensor(correct, dtype=torch.bool),
                              torch.tensor(length, dtype=torch.float64), torch.tensor(group),
                              alpha=0.2, top_fraction=0.5)
    assert torch.allclose(out.batch.reward.double(), want, atol=1e-6)
    assert torch.equal(out.episode_return, out.batch.reward)
    assert metrics["train/accuracy"] == pytest.approx(0.5)
    assert metrics["train/response_length_mean"] == pytest.approx(sum(length) / 8)


def test_hapo_stage_uses_history_from_previous_batches():
    stage = RewardStage("hapo", {})
    first, _ = stage.apply(_rollout([1, 0], [12, 30], [0, 0]), iteration=0)
    assert first.batch.reward.tolist() == [1.0, 0.0]            # no history yet: f = 0
    second, _ = stage.apply(_rollout([1, 0], [6, 30], [0, 0]), iteration=1)
    want = hapo_reward(torch.tensor([True, False]), torch.tensor([6.0, 30.0]),
                       torch.tensor([12.0, 12.0]))
    assert torch.allclose(second.batch.reward.double(), want, atol=1e-6)


class _Tok:
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return f"len{len(ids)}"


def test_dot_truncates_outliers_of_all_correct_groups_and_reverifies():
    calls = []

    def verifier(text, gold):
        calls.append(text)
        return VerifyResult(False, None, gold, "wrong")   # the cut answer no longer verifies

    g = 16
    length = [10] * (g - 1) + [100]
    stage = RewardStage(None, {}, tokenizer=_Tok(), verifier=verifier,
                             dot={"alpha": 3.0, "margin": 4})
    out, metrics = stage.apply(_rollout([1] * g, length, [0] * g), iteration=0)
    assert metrics["reward/dot_truncated"] == 1.0
    cut = int(out.response_mask[-1].sum())
    assert cut < 100 and cut == int(sum(length) / g + 3 * torch.tensor(
        length, dtype=torch.float64).std())
    assert calls == [f"len{cut}"]
    assert out.batch.reward.tolist() == [1.0] * (g - 1) + [0.0]
    assert bool(out.truncated[-1]) and float(out.logprobs[-1, cut:].abs().sum()) == 0.0
    # groups with a wrong answer, and small groups, are never cut
    out2, m2 = stage.apply(_rollout([1] * (g - 1) + [0], length, [0] * g), iteration=0)
    assert m2["reward/dot_truncated"] == 0.0 and torch.equal(out2.response_mask,
                                                              _rollout([1] * g, length,
                                                                       [0] * g).response_mask)
