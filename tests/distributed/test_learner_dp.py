"""2 ranks equal 1 rank (spec-scale-out §3 T1, T2): the data-parallel learner on group-aligned,
uneven shards (18 | 10 rows; 2 PPO epochs × 2 mini-batches, micro-batches of 4, AdamW, grad
clip, entropy bonus) ends with the parameters of the unchanged one-process learner on all rows,
for the replicated model and for FSDP2, for row batching (PPO-clip) and whole-group batching
with the mini-batch KL (DRPO); losses and gradient norms equal step by step. float64, so the
tolerance proves the arithmetic, not luck."""

from __future__ import annotations

import json

import pytest

from .torchrun import ROOT, torchrun


@pytest.mark.parametrize("mode", ["replicated", "fsdp2"])
@pytest.mark.parametrize("loss", ["ppo", "drpo"])
def test_two_ranks_equal_one(tmp_path, mode, loss):
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests/distributed/worker_learner.py"), "--mode", mode, "--loss", loss,
              "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["rows"] == [18, 28]                           # rank 0's share of all rows
    assert r["moved"] > 1e-3                               # the update did move the weights
    assert r["max_param_diff"] <= 1e-10
    assert r["updates"] == [4.0, 4.0]                      # 2 epochs × 2 mini-batches
    for dp, one in zip(r["dp"], r["one"], strict=True):
        for key, value in one.items():
            assert dp[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
