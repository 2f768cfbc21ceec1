"""Run under ``torchrun --nproc_per_node=2`` by test_preference_dp.py (not collected by pytest).

``update OUT``, for DPO (reference log-probs) and ORPO (reference-free; NLL over the batch's
chosen tokens): every rank builds the same float64 tiny policy and the same 17 tokenised pairs;
DPO's reference log-probs are computed sharded (the cache written by rank 0) and compared with
one process's; then 2 epochs of preference steps (batches of 7 → 4 | 3 pairs per rank, the last
batch of 3 → 2 | 1, micro-batches of 2, AdamW, an active grad clip) run data parallel while
rank 0 replays them in one process on all pairs, from a copy of the initial weights; the
sharded evaluation is compared with one process's; finally a NaN loss on rank 1 alone must skip
the step on both ranks. Rank 0 writes the comparisons to ``OUT`` (JSON).

``train [--stop-at K] ARGV``: ``grouprl ARGV`` unchanged (with ``--stop-at K`` rank 1 sends
itself SIGINT during step K, so the stop must reach rank 0 through the collective; the exit
code 130 then counts as success), recording on every rank a digest of its weights at every
checkpoint and the CLI's exit code (``RUN_DIR.rank{r}.json``).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path

import torch
from worker_train import digest

import grouprl.recipes.preference as recipe
import grouprl.train.pairs as pairs
import grouprl.train.parallel as parallel
from grouprl.cli import main as cli_main
from grouprl.data import PreferencePair
from grouprl.distributed import init_distributed, shutdown
from grouprl.policy import build_tiny_policy
from grouprl.train.pair_data import tokenize_preference_pairs

N_PAIRS, BATCH, MICRO, EPOCHS = 17, 7, 2, 2


def make_pairs() -> list[PreferencePair]:
    out = []
    for i in range(N_PAIRS):
        a, b = (7 * i) % 10, (3 * i + 1) % 10
        prompt = f"What is {a} + {b}?" + (" Think first." if i % 3 == 0 else "")
        wrong = " then I guess" * (i % 4)
        out.append(PreferencePair(prompt, f"<answer>{a + b}</answer>",
                                  f"<answer>{a + b + 1}</answer>{wrong}"))
    return out


def run_steps(model, data, ref, loss, options, comm=None) -> tuple[list[dict], list[list[int]]]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(11)
    kwargs = {"comm": comm} if comm is not None else {}
    logs, batches = [], []
    for _ in range(EPOCHS):
        perm = torch.randperm(N_PAIRS, generator=gen)
        for idx in perm.split(BATCH):
            logs.append(pairs.preference_step(model, opt, params, data, idx, ref, loss, options,
                                              MICRO, 0.05, **kwargs))
            batches.append(idx.tolist())
    return logs, batches


def update(out: str) -> int:
    torch.set_num_threads(1)
    comm = init_distributed("cpu")
    results = {loss: update_with(loss, comm, Path(out).parent) for loss in ("dpo", "orpo")}
    if comm.is_main:
        Path(out).write_text(json.dumps(results))
    comm.barrier()
    return 0


def update_with(loss: str, comm, cache: Path) -> dict | None:
    ps = make_pairs()
    texts = [x for p in ps for x in (p.prompt, p.chosen, p.rejected)]
    model, tok = build_tiny_policy(texts, vocab_size=300, seed=0, hidden_size=32, num_layers=2,
                                   num_heads=2, num_kv_heads=1, intermediate_size=64,
                                   dtype=torch.float64)
    data = tokenize_preference_pairs(tok, ps)
    pairs.check_same_pairs({"train": data}, comm)
    options = {"beta": 0.5}
    ref = None
    ref_equal = True
    if loss != "orpo":
        ref = pairs.cached_reference_logps(model, {"train": data}, cache / pairs.REFERENCE_FILE,
                                           micro_batch_size=MICRO, comm=comm)["train"]
        one = pairs.batched_pair_logps(model, data, MICRO)            # one process, all pairs
        ref_equal = torch.equal(ref[0], one[0]) and torch.equal(ref[1], one[1])
        g = torch.Generator().manual_seed(3)                          # policy ≠ reference
        ref = (ref[0] + 0.5 * torch.randn(N_PAIRS, generator=g), ref[1])
    else:
        options = {"beta": 0.1}
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    logs, batches = run_steps(model, data, ref, loss, options, comm=comm)
    ev = pairs.evaluate_pairs(model, data, ref, loss=loss, loss_options=options,
                              micro_batch_size=3, comm=comm)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    digests = comm.gather(digest(model))

    # a NaN loss on rank 1 only: every rank skips the step
    real = pairs.preference_loss

    def nan_on_rank1(*a, **kw):
        value, m = real(*a, **kw)
        return (value * float("nan") if comm.rank == 1 else value), m

    pairs.preference_loss = nan_on_rank1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    nan_step = pairs.preference_step(model, opt, [p for p in model.parameters()], data,
                                     torch.arange(BATCH), ref, loss, options, MICRO, 1.0,
                                     comm=comm)
    pairs.preference_loss = real
    after_nan = comm.gather((digest(model), nan_step["train/skipped_updates"]))

    if comm.is_main:
        ref_logs, ref_batches = run_steps(reference, data, ref, loss, options)
        ref_ev = pairs.evaluate_pairs(reference, data, ref, loss=loss, loss_options=options,
                                      micro_batch_size=3)
        ref_params = reference.state_dict()
        keys = ("pref/loss", "pref/reward_accuracy", "pref/reward_margin", "actor/grad_norm",
                "train/pairs")
        result = {
            "max_param_diff": max(float((ref_params[k] - params[k]).abs().max())
                                  for k in ref_params),
            "moved": max(float((ref_params[k] - initial[k]).abs().max()) for k in ref_params),
            "same_batches": batches == ref_batches,
            "dp": [{k: m[k] for k in keys if k in m} for m in logs],
            "one": [{k: m[k] for k in keys if k in m} for m in ref_logs],
            "skipped": [m["train/skipped_updates"] for m in logs],
            "ref_equal": ref_equal, "cache_written": (cache / pairs.REFERENCE_FILE).is_file(),
            "replicas_equal": len(set(digests)) == 1,
            "eval_dp": ev, "eval_one": ref_ev,
            "nan_skipped": [s for _, s in after_nan],
            "nan_unchanged": [d == digests[0] for d, _ in after_nan],
        }
        return result
    return None


def train(argv: list[str]) -> int:
    stop_at = None
    if argv and argv[0] == "--stop-at":
        stop_at, argv = int(argv[1]), argv[2:]
    run_dir = argv[argv.index("--resume") + 1] if "--resume" in argv else \
        next(a.split("=", 1)[1] for a in argv if a.startswith("run_dir="))
    rank = int(os.environ["RANK"])
    record: dict = {"digests": [], "rc": None}
    save, step = parallel.ParallelModel.save, recipe.preference_step
    calls = []

    def recording_save(self, model, optimizer, generators, write):
        record["digests"].append(digest(model))
        return save(self, model, optimizer, generators, write)

    def stopping_step(*a, **kw):
        calls.append(1)
        if stop_at is not None and rank == 1 and len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*a, **kw)

    parallel.ParallelModel.save = recording_save
    recipe.preference_step = stopping_step
    try:
        record["rc"] = cli_main(argv)
    finally:
        with open(f"{run_dir}.rank{rank}.json", "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0 if record["rc"] == 130 and stop_at is not None else record["rc"]


if __name__ == "__main__":
    rc = update(sys.argv[2]) if sys.argv[1] == "update" else train(sys.argv[2:])
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
