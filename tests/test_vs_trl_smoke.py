"""Smoke test of the speed race vs TRL (``benchmarks/vs_trl.py``): smallest shape, two steps."""

from __future__ import annotations

import pytest

from benchmark_module import benchmark_module

pytest.importorskip("trl")
torch = pytest.importorskip("torch")


@pytest.fixture
def vs_trl():
    with benchmark_module("vs_trl") as module:
        yield module


def test_race_runs_both_sides_and_writes_its_section(vs_trl, tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = vs_trl.main(["--shapes", "2x2x16", "--steps", "2", "--warmup", "1",
                       "--curve-steps", "0", "--bc-updates", "1",
                       "--work-dir", str(tmp_path / "work"), "--write", "--output", str(doc)])
    for side in ("trl", "grouprl"):
        r = out["race"][f"{side} B=2 G=2 T=16"]
        assert "error" not in r, f"{side}: {r.get('error')}"
        assert len(r["step_s"]) == 2 and all(s > 0 for s in r["step_s"])
        assert r["median_s"] > 0 and r["tok_s"] > 0
        assert all(0 < t <= 2 * 2 * 16 for t in r["tokens"])  # B·G completions of <= T tokens
        assert all(0.0 <= x <= 1.0 for x in r["reward"])
        assert 0 < r["rollout_mean_s"] and 0 < r["rest_mean_s"]
    # grouprl's reasoning env is there: TRL reads the prompts grouprl draws, in order
    assert out["race"]["trl B=2 G=2 T=16"]["same_prompts_as_grouprl"]
    text = doc.read_text()
    assert "<!-- vs_trl:start -->" in text and "<!-- vs_trl:end -->" in text
    assert "Speed race vs TRL GRPOTrainer" in text and "| B=2 G=2 T=16 |" in text


def test_tables(vs_trl):
    shape = vs_trl.Shape.parse("4x8x32")
    results = {("trl", shape): {"median_s": 2.0, "tok_s": 300.0, "tokens_per_step": 600},
               ("grouprl", shape): {"error": "ConfigError: nope"}}
    race = "\n".join(vs_trl.race_table([shape], results))
    assert "| B=4 G=8 T=32 | 2.000 | — | — | 300 | — | — | 600 / — |" in race
    assert "grouprl at B=4 G=8 T=32: `ConfigError: nope`" in race
    curve = "\n".join(vs_trl.curve_table(
        {"reward": [0.0, 0.5, 1.0], "tokens": [40.0, 40.0, 100.0]},
        {"reward": [0.25] * 7, "tokens": [20.0] * 7}, rows_per_step=4, window=5))
    assert "| 1–5 | 0.500 | 0.250 | 15.0 | 5.0 |" in curve
    assert "| 6–7 | — | 0.250 | — | 5.0 |" in curve


def test_trl_config_gives_one_optimizer_step_per_generation(vs_trl, tmp_path):
    from trl_side import trl_config

    cfg = trl_config(str(tmp_path), num_generations=8, prompts_per_step=4,
                     max_completion_length=32, lr=1e-4, steps=3, micro_batch=16)
    rows = 4 * 8
    assert cfg.generation_batch_size == rows
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == rows
    assert cfg.steps_per_generation == cfg.gradient_accumulation_steps == 2
    assert cfg.loss_type == "dapo" and cfg.beta == 0.0 and cfg.num_iterations == 1
    assert cfg.scale_rewards == "group" and cfg.top_k == 0 and cfg.top_p == 1.0
    assert not cfg.gradient_checkpointing and not cfg.bf16
