"""benchmarks/pamoe.py without training: the arms' keys (equal adapter parameters), the run
summary and the results page (its hand-written section survives a rewrite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark_module import benchmark_module
from grouprl.train import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_single_lora_arm_has_the_experts_parameter_count():
    with benchmark_module("pamoe") as study:
        assert study.arm_overrides("pa-moe", 8, 4) == ["model.pamoe.mode=pa-moe"]
        single = study.arm_overrides("single", 8, 4)
    cfg = load_config(ROOT / "configs" / "pamoe_sokoban.yaml", single)
    p = cfg.model.pamoe
    assert (p.mode, p.rank, p.target_modules) == ("reference", 32,
                                                  ["q_proj", "k_proj", "v_proj", "o_proj"])


def test_summary_and_page(tmp_path):
    rows = [{"iteration": 0, "eval/success_rate": 0.5, "eval/success_rate/a": 0.75,
             "eval/success_rate/b": 0.25},
            {"iteration": 1, "actor/updates": 2.0, "router/occupancy/a": 1.0,
             "router/occupancy/b": 0.0, "router/switch_rate": 0.1, "router/entropy": 1.0,
             "train/success_rate/a": 0.5},
            {"iteration": 2, "actor/updates": 2.0, "router/occupancy/a": 0.5,
             "router/occupancy/b": 0.5, "router/switch_rate": 0.3, "router/entropy": 1.2,
             "pamoe/trainable_parameters": 100.0, "eval/success_rate": 0.625,
             "eval/success_rate/a": 1.0, "eval/success_rate/b": 0.25}]
    with benchmark_module("pamoe") as study:
        s = study.summarise(rows)
        assert s["categories"] == ["a", "b"] and s["success"] == 0.625
        assert s["success_before"] == 0.5 and s["before/a"] == 0.75
        assert s["occupancy/a"] == pytest.approx(0.75) and s["switch_rate"] == pytest.approx(0.2)
        assert s["train/b"] is None and s["params"] == 100.0
        page = tmp_path / "page.md"
        record = {"arm": "pa-moe", "seed": 0, **s}
        study.write_page(page, [record], "sokoban", False, [])
        assert "| pa-moe | 1 | 100 | 0.625 ± 0.000 |" in page.read_text()
        page.write_text(page.read_text() + "\n## What did and did not reproduce\n\nnotes\n")
        study.write_page(page, [record, {**record, "seed": 1}], "sokoban", False, [])
        text = page.read_text()
        assert "| pa-moe | 2 |" in text and text.endswith("reproduce\n\nnotes\n")
