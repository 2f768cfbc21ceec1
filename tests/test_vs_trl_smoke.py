"""Smoke test of the speed race vs TRL (``benchmarks/vs_trl.py``): smallest shape, two steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def vs_trl():
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        import vs_trl

        yield vs_trl
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))


def test_race_runs_both_sides_and_writes_its_section(vs_trl, tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = vs_trl.main(["--shapes", "2x2x16", "--steps", "2", "--warmup", "1",
                       "--curve-steps", "2", "--bc-updates", "2", "--tasks", "16",
                       "--work-dir", str(tmp_path / "work"), "--write", "--output", str(doc)])
    for side in ("trl", "grouprl"):
        r = out["race"][f"{side} B=2 G=2 T=16"]
        assert "error" not in r, f"{side}: {r.get('error')}"
        assert len(r["step_s"]) == 2 and all(s > 0 for s in r["step_s"])
        assert r["median_s"] > 0 and r["tok_s"] > 0
        assert all(0 < t <= 2 * 2 * 16 for t in r["tokens"])  # B·G completions of <= T tokens
        assert len(out["curve"][side]["reward"]) == 2
        assert all(0.0 <= x <= 1.0 for x in out["curve"][side]["reward"])
    text = doc.read_text()
    assert "<!-- vs_trl:start -->" in text and "<!-- vs_trl:end -->" in text
    assert "Speed race vs TRL GRPOTrainer" in text and "| B=2 G=2 T=16 |" in text


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
