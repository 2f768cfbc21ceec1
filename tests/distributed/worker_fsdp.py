"""Run under ``torchrun --nproc_per_node=2`` by test_fsdp.py (not collected by pytest).

T4 (spec-scale-out §3): an FSDP2 model trains one step, its full state is written as a grouprl
checkpoint by rank 0 (the one-process format), a fresh sharded model and optimizer load it
(``broadcast_from_rank0``), and the next step equals the uninterrupted model's next step.
T5: generation on the FSDP2 model inside ``gathered`` with a different number of decoding steps
per rank (5 and 17) does not hang and equals the unsharded model's."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from grouprl.batch import select_rows
from grouprl.distributed import init_distributed, shutdown
from grouprl.distributed.fsdp import full_state, gathered, load_full_state, shard_model
from grouprl.losses.objective import make_objective
from grouprl.policy import build_tiny_policy, generate
from grouprl.train.checkpoint import load_checkpoint, save_checkpoint
from grouprl.train.learner import update_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_learner import make_rows, run  # noqa: E402


def opt_one(model):
    return torch.optim.AdamW(model.parameters(), lr=3e-3)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    comm = init_distributed("cpu", lockstep=True)
    corpus = [f"question {i} answer {i * 7 % 13} think step {i % 5}" for i in range(60)]
    base, tok = build_tiny_policy(corpus, vocab_size=300, seed=0, hidden_size=32, num_layers=2,
                                  num_heads=2, num_kv_heads=1, intermediate_size=64,
                                  dtype=torch.float64)
    rows = make_rows(base, base.config.vocab_size)
    half = torch.arange(comm.rank, len(rows), comm.world_size)
    local = select_rows(rows, half)
    plain = copy.deepcopy(base)

    # T5: generation, different step counts per rank
    sharded_gen = shard_model(copy.deepcopy(base), comm)
    steps = 5 if comm.rank == 0 else 17
    prompts = ["question 3 answer", "think step 2"]
    with torch.no_grad(), gathered(sharded_gen):
        got = generate(sharded_gen, tok, prompts, max_new_tokens=steps, do_sample=False)
    want = generate(plain, tok, prompts, max_new_tokens=steps, do_sample=False)
    same_generation = bool(torch.equal(got.response_ids, want.response_ids))

    # T4: checkpoint -> resume -> next step
    model = shard_model(copy.deepcopy(base), comm)
    _, opt = run(model, local, "ppo", iterations=1, comm=comm)
    msd, osd = full_state(model, opt)
    run_dir = Path(args.out).parent / "run"
    if comm.is_main:
        save_checkpoint(run_dir, iteration=1, model=model, optimizer=opt, model_state=msd,
                        optimizer_state=osd)
    comm.barrier()
    fresh = shard_model(copy.deepcopy(base), comm)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=3e-3, weight_decay=0.01)
    load_checkpoint(run_dir, model=fresh, optimizer=fresh_opt, restore_rng=False,
                    load_state=lambda m, o: load_full_state(fresh, fresh_opt, m, o))
    loaded, _ = full_state(fresh, fresh_opt)
    loaded_equal = all(torch.equal(loaded[k], msd[k]) for k in msd) if comm.is_main else True

    objective = make_objective("ppo", None, None, {"max_new_tokens": 10})
    for m, o in ((model, opt), (fresh, fresh_opt)):
        update_policy(m, o, local, objective, ppo_epochs=1, num_mini_batches=2,
                      micro_batch_size=4, generator=torch.Generator().manual_seed(3), comm=comm)
    a, _ = full_state(model, opt)
    b, _ = full_state(fresh, fresh_opt)
    gens = comm.gather(same_generation)
    if comm.is_main:
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        load_checkpoint(run_dir, model=copy.deepcopy(base), restore_rng=False)  # strict
        one = save_checkpoint(run_dir.parent / "one", iteration=1, model=base, optimizer=opt_one(
            base))
        with safe_open(str(one / "model.safetensors"), "pt") as f1, \
                safe_open(str(run_dir / "checkpoints/iter_000001/model.safetensors"), "pt") as f2:
            same_format = (sorted(f1.keys()) == sorted(f2.keys())
                           and f1.metadata() == f2.metadata())
        json.dump({"generation_equal": gens, "loaded_equal": loaded_equal,
                   "next_step_diff": diff, "same_format": same_format}, open(args.out, "w"))
    comm.barrier()
    return 0


if __name__ == "__main__":
    rc = main()
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
