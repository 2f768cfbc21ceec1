"""Run under ``torchrun --nproc_per_node=2`` by test_sharding.py (not collected by pytest).

Advantages on group-aligned shards (spec-scale-out §3 T3): each rank computes every estimator on
its contiguous block of whole groups (reinforce_pp with the communicator, so its batch
whitening is global); rank 0 gathers the shards and compares them with the whole batch."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from grouprl.advantages import RolloutBatch, compute_advantages
from grouprl.distributed import init_distributed, shard_bounds, shutdown

GROUP_LOCAL = {"grpo": {}, "dr_grpo": {}, "rloo": {}, "gigpo": {"gamma": 0.9},
               "hgpo": {"history_length": 2}, "graphgpo": {"omega": 0.2},
               "canon": {"l_max": 16.0}}


def make_batch(groups: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns of ``groups`` groups (2–4 trajectories of 1–5 steps, states from a pool of 6,
    rewards in {0, 0.5, 1}) in group order, and each row's response length."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("group_id", "traj_id", "step", "reward", "state",
                                             "next_state", "invalid")}
    traj = 0
    for g in range(groups):
        for _ in range(rng.integers(2, 5)):
            length = int(rng.integers(1, 6))
            states = rng.integers(0, 6, size=length + 1) + 10 * g
            for t in range(length):
                cols["group_id"].append(g)
                cols["traj_id"].append(traj)
                cols["step"].append(t)
                cols["reward"].append(float(rng.choice([0.0, 0.5, 1.0])) if t == length - 1
                                      else 0.0)
                cols["state"].append(int(states[t]))
                cols["next_state"].append(int(states[t + 1]))
                cols["invalid"].append(bool(rng.random() < 0.2))
            traj += 1
    out = {k: np.asarray(v) for k, v in cols.items()}
    return out, rng.integers(1, 17, size=len(out["group_id"]))


def advantages(name: str, cols: dict[str, np.ndarray], length: np.ndarray, comm=None):
    opts = dict(GROUP_LOCAL.get(name, {}))
    if name == "reinforce_pp":
        opts.update(response_length=torch.as_tensor(length), comm=comm)
    if name == "canon":
        opts["metric"] = torch.as_tensor(length, dtype=torch.float64)
    batch = RolloutBatch(**{k: torch.as_tensor(v) for k, v in cols.items()})
    return compute_advantages(name, batch, **opts)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    comm = init_distributed("cpu")
    result: dict[str, list] = {}
    for seed in range(5):
        cols, length = make_batch(8 + seed, seed)
        lo, hi = shard_bounds(8 + seed, comm.world_size, comm.rank)
        own = (cols["group_id"] >= lo) & (cols["group_id"] < hi)
        local = {k: v[own] for k, v in cols.items()}
        for name in [*GROUP_LOCAL, "reinforce_pp"]:
            shard = advantages(name, local, length[own], comm).tolist()
            parts = comm.gather(shard)
            if comm.is_main:
                whole = advantages(name, cols, length).tolist()
                got = [x for part in parts for x in part]
                result.setdefault(name, []).append(
                    max(abs(a - b) for a, b in zip(got, whole, strict=True)))
    if comm.is_main:
        with open(args.out, "w") as f:
            json.dump(result, f)
    comm.barrier()
    return 0


if __name__ == "__main__":
    rc = main()
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
