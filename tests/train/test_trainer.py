"""End-to-end trainer runs on tiny models (seconds each): learning, resume, robustness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grouprl.envs import SokobanEnv, register_env
from grouprl.envs.sokoban import SokobanLevel
from grouprl.recipes import train
from grouprl.train import ConfigError, load_config
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.metrics import read_metrics

# A level solved by one push ("left"), and a second one solved by "up".
EASY = "#####\n#___#\n#OXP#\n#___#\n#####"


class EasySokoban(SokobanEnv):
    """Every seed plays the same trivially easy level (one push solves it)."""

    def reset(self, seed=None):
        return self.reset_to_level(SokobanLevel.from_text(EASY))


register_env("test_easy_sokoban", EasySokoban, overwrite=True)

TINY = [
    "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
    "model.tiny.tokenizer_episodes=10", "logging.progress=false", "threads=1",
    "rollout.groups_per_batch=2", "rollout.group_size=4", "rollout.max_new_tokens=6",
    "eval.episodes=8", "env.max_steps=3",
]


def tiny_config(tmp_path: Path, *extra: str, **kw):
    env = ["env.name=test_easy_sokoban", "env.kwargs={dim_room: [5, 5]}"]
    return load_config(None, [*TINY, *env, f"run_dir={tmp_path / 'run'}", *extra])


def metrics_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("timing/")}
            for row in read_metrics(run_dir)]


WARM = ["bc.episodes=4", "bc.epochs=40", "bc.batch_size=4", "bc.lr=3e-3"]


def test_rl_raises_success_on_an_easy_level(tmp_path):
    # behaviour cloning stopped early (≈19% held-out success), then 15 GiGPO iterations
    cfg = tiny_config(tmp_path, *WARM, "iterations=15", "eval.every=0", "optim.lr=2e-3",
                      "algorithm.kl_coef=0.0", "algorithm.num_mini_batches=2",
                      "eval.episodes=16", "rollout.groups_per_batch=4")
    result = train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    bc = rows[0]
    assert bc["bc/loss_last"] < 0.3 * bc["bc/loss_first"]
    assert result.success_after >= result.success_before + 0.3, (result.success_before,
                                                                 result.success_after)
    train_success = [r["train/success_rate"] for r in rows if "train/success_rate" in r]
    assert sum(train_success[-4:]) > sum(train_success[:4])
    assert all(r["train/skipped_updates"] == 0 for r in rows if "train/skipped_updates" in r)


def _interrupt_at(monkeypatch, iteration: int):
    """Send ourselves SIGINT while iteration ``iteration`` (0-based) runs."""
    import os
    import signal

    from grouprl.train.sampling import Sampler

    real = Sampler.rollout

    def wrapped(self, it, *args, **kwargs):
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, it, *args, **kwargs)

    monkeypatch.setattr(Sampler, "rollout", wrapped)


def test_interrupted_and_resumed_run_logs_the_same_metrics(tmp_path, monkeypatch):
    common = [*WARM, "iterations=5", "eval.every=2", "save_every=0", "optim.lr=2e-3",
              "algorithm.kl_coef=0.01", "algorithm.num_mini_batches=2",
              "algorithm.entropy_coef=0.001"]
    full = tiny_config(tmp_path / "a", *common)
    train(full, echo=lambda s: None)

    cut = tiny_config(tmp_path / "b", *common)
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train(cut, echo=lambda s: None)
    ckpt = latest_checkpoint(cut.run_dir)
    assert ckpt is not None and ckpt.name == "iter_000003"  # iteration 3 finished, then saved
    assert [r["iteration"] for r in read_metrics(cut.run_dir)][-1] == 3
    train(cut, resume=True, echo=lambda s: None)
    assert metrics_without_timing(cut.run_dir) == metrics_without_timing(full.run_dir)
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(full.run_dir) / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(cut.run_dir) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_non_finite_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    import grouprl.losses.objective as objective

    real = objective.policy_loss

    def nan_loss(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(objective, "policy_loss", nan_loss)
    cfg = tiny_config(tmp_path, *WARM, "iterations=2", "eval.every=0",
                      "algorithm.num_mini_batches=2")
    train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    assert [r["train/skipped_updates"] for r in rows if "train/skipped_updates" in r] == [2, 2]
    assert rows[-1]["train/skipped_updates_total"] == 4
    # the weights are the warm start's: nothing was applied
    from safetensors.torch import load_file

    from grouprl.policy import load_policy

    warm, _ = load_policy(Path(cfg.run_dir) / "warm_start")
    saved = load_file(str(latest_checkpoint(cfg.run_dir) / "model.safetensors"))
    for name, p in warm.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], p), name


def test_informative_groups_drop_groups_with_equal_returns():
    from grouprl.train.sampling import informative_groups

    group = torch.tensor([7, 7, 3, 3, 3, 9, 5, 5])
    ret = torch.tensor([1.0, 1.0, 0.0, 10.9, 0.0, 4.0, -0.3, -0.2999999])
    # 7: all equal; 3: varied; 9: singleton (constant); 5: differ by a few float32 ulps
    assert informative_groups(group, ret).tolist() == [3, 5]
    assert informative_groups(torch.tensor([1, 1]), torch.tensor([0.1, 0.1])).numel() == 0


def test_dynamic_sampling_runs_repeated_rollouts(tmp_path):
    cfg = tiny_config(tmp_path, *WARM, "iterations=2", "eval.every=0",
                      "rollout.dynamic_sampling=true", "rollout.max_sample_batches=3",
                      "rollout.groups_per_batch=2")
    train(cfg, echo=lambda s: None)
    rows = [r for r in read_metrics(cfg.run_dir) if "train/sample_batches" in r]
    assert all(1 <= r["train/sample_batches"] <= 3 for r in rows)


@pytest.mark.parametrize("override, message", [
    ("algorithm.estimator=gigpoo", "algorithm.estimator: 'gigpoo' is not accepted"),
    ("algorithm.loss=ppp", "algorithm.loss: 'ppp' is not accepted"),
    ("algorithm.estimator_options={gama: 0.9}", "algorithm.estimator_options"),
    ("algorithm.loss_options={clip_ratio: 0.2}", "algorithm.loss_options: clip_ratio: unknown"),
    ("env.name=nosuchenv", "env.name: 'nosuchenv' is not accepted"),
    ("model.path=/no/such/model", "model.path: '/no/such/model' is not a local directory"),
    ("agent.template=nosuch", "agent.template"),
])
def test_config_errors_fail_before_any_work(tmp_path, override, message):
    cfg = tiny_config(tmp_path, override)
    with pytest.raises(ConfigError, match=message):
        train(cfg, echo=lambda s: None)
    assert not (Path(cfg.run_dir) / "metrics.jsonl").exists()


def test_existing_run_dir_needs_resume(tmp_path):
    cfg = tiny_config(tmp_path, *WARM, "iterations=0")
    train(cfg, echo=lambda s: None)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(cfg, echo=lambda s: None)


def test_cli_train_eval_plot(tmp_path, capsys):
    from grouprl.cli import main

    run = tmp_path / "cli"
    args = [*TINY, "env.name=test_easy_sokoban", "env.kwargs={dim_room: [5, 5]}", *WARM,
            "iterations=2", "eval.every=1", f"run_dir={run}"]
    assert main(["train", *args]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 2 and 0 <= summary["success_after_rl"] <= 1
    assert main(["eval", str(run), "eval.episodes=4"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["iteration"] == 2 and "eval/success_rate" in ev
    assert main(["plot", str(run)]) == 0
    png = Path(capsys.readouterr().out.strip())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["train", "rollout.group_size=0"]) == 2
    assert "rollout.group_size: must be >= 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "iterations=3"]) == 0
    assert [r["iteration"] for r in read_metrics(run)][-1] == 3


def test_a_default_run_prints_no_deprecation_warnings(tmp_path, caplog, capfd):
    """The built-in default job (shrunk) raises no Deprecation/FutureWarning and logs no
    library deprecation notice (issue 12: generation on the current cache API)."""
    import logging
    import warnings

    cfg = load_config(None, [*TINY, f"run_dir={tmp_path / 'run'}", "iterations=2", "bc.episodes=6",
                             "bc.epochs=1", "eval.every=1", "model.lora.enabled=true",
                             "algorithm.kl_coef=0.01"])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        train(cfg, echo=lambda s: None)
    bad = [str(w.message) for w in caught
           if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not bad, bad
    assert not [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert "deprecat" not in capfd.readouterr().err.lower()
