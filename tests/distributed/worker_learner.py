"""Run under ``torchrun --nproc_per_node=2`` by test_learner_dp.py (not collected by pytest).

Every rank builds the same tiny policy and the same rows (whole groups, shared unevenly: rank 0
owns groups [0, 3), rank 1 groups [3, 5)); the data-parallel learner (replicated or FSDP2)
updates on its share; rank 0 replays the same update in one process on all rows, from a copy
of the initial weights, with the unchanged ``update_policy``, and writes the differences.

``--device cuda`` (benchmarks/gpu_check.sh): the same, with the model built and the rows made on
the CPU as before, then the model moved to ``cuda:LOCAL_RANK`` (NCCL between ranks); the rows stay
on the CPU, as the trainer keeps them (the learner moves each micro-batch to the model's
device)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

from grouprl.batch import Rollout, RolloutBatch, select_rows
from grouprl.distributed import init_distributed, shard_bounds, shutdown
from grouprl.distributed.fsdp import full_state, shard_model
from grouprl.losses.objective import make_objective
from grouprl.policy import build_tiny_policy
from grouprl.train.learner import batched_logprobs, update_policy

SIZES = (6, 5, 7, 4, 6)           # rows per group (rank 0: 18 rows, rank 1: 10 rows)


def make_rows(model, vocab: int) -> Rollout:
    g = torch.Generator().manual_seed(5)
    n, P, R = sum(SIZES), 7, 10
    p_len = torch.randint(2, P + 1, (n,), generator=g)
    r_len = torch.randint(1, R + 1, (n,), generator=g)
    prompt_mask = (torch.arange(P)[None] >= P - p_len[:, None]).long()
    response_mask = (torch.arange(R)[None] < r_len[:, None]).long()
    prompt_ids = torch.randint(3, vocab, (n, P), generator=g) * prompt_mask
    response_ids = torch.randint(3, vocab, (n, R), generator=g) * response_mask
    group = torch.cat([torch.full((k,), q) for q, k in enumerate(SIZES)])
    batch = RolloutBatch(group_id=group, traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.long), reward=torch.zeros(n),
                         success=torch.rand(n, generator=g) < 0.5)
    rows = Rollout(batch, prompt_ids, prompt_mask, response_ids, response_mask,
                   advantages=torch.randn(n, generator=g, dtype=torch.float64))
    rows.old_logp = batched_logprobs(model, rows, temperature=1.0, micro_batch_size=8)
    rows.old_logp = (rows.old_logp + 0.03 * torch.randn(rows.old_logp.shape, generator=g,
                                                 dtype=torch.float64)) \
        * response_mask
    return rows


def run(model, rows, loss, *, iterations, comm=None):
    objective = make_objective(loss, None, None, {"max_new_tokens": 10})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(11)
    kwargs = {"comm": comm} if comm is not None else {}
    logs = [update_policy(model, opt, rows, objective, ppo_epochs=2, num_mini_batches=2,
                          micro_batch_size=4, grad_clip=1.0, generator=gen, entropy_coef=0.01,
                          **kwargs) for _ in range(iterations)]
    return logs, opt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("replicated", "fsdp2"), required=True)
    p.add_argument("--loss", default="ppo")
    p.add_argument("--out", required=True)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    comm = init_distributed(args.device, lockstep=args.mode == "fsdp2")
    corpus = [f"question {i} answer {i * 7 % 13} think step {i % 5}" for i in range(60)]
    model, _ = build_tiny_policy(corpus, vocab_size=300, seed=0, hidden_size=32, num_layers=2,
                                 num_heads=2, num_kv_heads=1, intermediate_size=64,
                                 dtype=torch.float64)
    rows = make_rows(model, model.config.vocab_size)
    if args.device == "cuda":
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lo, hi = shard_bounds(len(SIZES), comm.world_size, comm.rank)
    first = sum(SIZES[:lo])
    own = torch.arange(first, first + sum(SIZES[lo:hi]))
    local = select_rows(rows, own)
    if args.mode == "fsdp2":
        shard_model(model, comm)
    logs, opt = run(model, local, args.loss, iterations=args.iterations, comm=comm)
    if args.mode == "fsdp2":
        params, _ = full_state(model, opt)
    else:
        params = {k: v.detach() for k, v in model.state_dict().items()}
    if comm.is_main:
        ref_logs, _ = run(reference, rows, args.loss, iterations=args.iterations)
        ref = reference.state_dict()
        moved = max(float((ref[k].cpu() - initial[k].cpu()).abs().max()) for k in ref)
        diff = max(float((ref[k].cpu() - params[k].cpu()).abs().max()) for k in ref)
        keys = ("actor/pg_loss", "actor/grad_norm", "actor/entropy")
        result = {"max_param_diff": diff, "moved": moved,
                  "dp": [{k: m.get(k) for k in keys} for m in logs],
                  "one": [{k: m.get(k) for k in keys} for m in ref_logs],
                  "updates": [m["actor/updates"] for m in logs],
                  "rows": [len(local), len(rows)],
                  "device": str(next(model.parameters()).device)}
        with open(args.out, "w") as f:
            json.dump(result, f)
    comm.barrier()
    return 0


if __name__ == "__main__":
    rc = main()
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
