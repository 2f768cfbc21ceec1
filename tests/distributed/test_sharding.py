"""Group-aligned sharding (spec-scale-out §3 T3): every group-local estimator computed on each
rank's block of whole groups is bit-identical to the whole batch; reinforce_pp's batch whitening
equals the whole batch once its sums are all-reduced (and differs without them)."""

from __future__ import annotations

import json

import torch

from grouprl.distributed import shard_bounds

from .torchrun import ROOT, torchrun
from .worker_advantages import GROUP_LOCAL, advantages, make_batch


def test_shard_bounds_cover_in_order():
    for count in range(0, 12):
        for world in (1, 2, 3, 5):
            spans = [shard_bounds(count, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [hi - lo for lo, hi in spans]
            assert max(sizes) - min(sizes) <= 1
            assert [len(t) for t in torch.arange(count).tensor_split(world)] == sizes


def test_shards_equal_whole_batch_under_torchrun(tmp_path):
    out = tmp_path / "adv.json"
    torchrun([str(ROOT / "tests/distributed/worker_advantages.py"), "--out", str(out)])
    diffs = json.loads(out.read_text())
    assert set(diffs) == {*GROUP_LOCAL, "reinforce_pp"}
    for name in GROUP_LOCAL:
        assert diffs[name] == [0.0] * 5, name                 # bit-identical
    assert max(diffs["reinforce_pp"]) <= 1e-6                  # float32 output, global stats


def test_reinforce_pp_needs_global_whitening():
    """Without the all-reduce, a shard whitens against its own statistics: not the batch's."""
    cols, length = make_batch(8, 0)
    own = cols["group_id"] < 4
    shard = advantages("reinforce_pp", {k: v[own] for k, v in cols.items()}, length[own])
    whole = advantages("reinforce_pp", cols, length)[torch.as_tensor(own)]
    assert float((shard - whole).abs().max()) > 1e-2
