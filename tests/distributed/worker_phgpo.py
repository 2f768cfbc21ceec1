"""Run under ``torchrun --nproc_per_node=2`` by test_phgpo_dp.py (not collected by pytest).

PhGPO's learner on 2 ranks against one process, float64 tiny tool-head policy on the synthetic
tool graph (the store first given a few deposits so the pheromone is not uniform):

* stage 1: one supervised epoch (mini-batches of 7 states shared 4 | 3) — parameters after it
  equal the one-process epoch's;
* stage 2: an RL epoch of 5 tasks in rounds of 2 (the last round: rank 1 has no task), the
  evaporation due before task 3 falling inside a round. Each rank records the rollout groups it
  sampled; rank 0 replays the same rounds in one process — one optimizer step on the mean loss
  over *all* the round's rows (one ``step_loss`` call on the concatenation), then the deposits
  and evaporations in task order — and compares parameters, the pheromone store and the elite
  buffer. Both ranks must hold the identical store and elite buffer;
* evaluation: both ranks report the same record; the next-tool accuracy equals one process's.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys

import torch

from grouprl.distributed import LOCAL, init_distributed, shutdown
from grouprl.phgpo import EliteBuffer, PheromoneStore, RewardConfig
from grouprl.phgpo.context import ContextConfig
from grouprl.phgpo.objective import step_loss
from grouprl.phgpo.rewards import trajectory_advantages
from grouprl.phgpo.sampling import concat_samples
from grouprl.phgpo.schedules import evaporation_due
from grouprl.phgpo.tool_head import ToolHeadPolicy
from grouprl.phgpo.transition import PheromoneConfig
from grouprl.policy import build_tiny_policy
from grouprl.train.config import load_config
from grouprl.train.tool_data import load_tool_data, task_state, tool_corpus
from grouprl.train.tool_learner import ToolLearner
from grouprl.train.tool_stages import EpochSettings, to_plain

SETTINGS = EpochSettings(2, 0, beta=0.7, lam=0.3, epsilon=0.1, teacher_forcing=0.3,
                         sl_weight=0.3, horizon=5)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(to_plain(obj), sort_keys=True).encode()).hexdigest()


def build(cfg, data, comm):
    lm, tok = build_tiny_policy(tool_corpus(data).texts, vocab_size=320, seed=0, hidden_size=32,
                                num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                                dtype=torch.float64)
    policy = ToolHeadPolicy(lm, len(data.tool_names), seed=0)
    pc = cfg.phgpo
    store = PheromoneStore(len(data.tool_names), data.num_variants,
                           scalar=PheromoneConfig(**pc.pheromone),
                           context=ContextConfig(**pc.context), use_context=pc.use_context,
                           context_write=pc.context_write)
    for task in data.train[5:12]:                     # a non-uniform starting pheromone
        store.update(task.reference, 0.8, reference_success=task.success,
                     embedding=data.embedding(task), task_key=str(task.task_id))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.01)
    return ToolLearner(pc, policy, tok, opt, data, store, EliteBuffer(),
                       RewardConfig(**pc.rewards), grad_clip=0.5, eval_tasks=4, seed=0,
                       comm=comm)


def replay_round(one: ToolLearner, tasks, groups, first: int) -> None:
    """One process on the round's data: one step on the mean over all its rows, then the
    deposits and evaporations in task order."""
    pc, names = one.pc, one.data.tool_names
    states, advs = [], []
    for task, g in zip(tasks, groups):
        adv = trajectory_advantages(g.returns, [0] * pc.group_size, std=pc.advantage_std)
        advs.append(adv[g.rollout])
        states += [task_state(task, names, g.actions[i][:t], g.outputs[i][:t])
                   for t in range(len(g.actions[0])) for i in range(pc.group_size)]
    one.policy.train()
    logits = one.logits(states)
    loss, _ = step_loss(logits, concat_samples([g.steps for g in groups]),
                        torch.cat(advs).to(logits.dtype), torch.cat([g.labels for g in groups]),
                        sl_weight=SETTINGS.sl_weight, ratio_mode=pc.ratio_mode, clip=pc.clip,
                        entropy_coef=pc.entropy_coef)
    one._step(loss)
    for k, (task, g) in enumerate(zip(tasks, groups)):
        if evaporation_due(first + k, pc.evaporate_every):
            one.store.evaporate()
        one._deposit(task, list(zip(g.actions, g.match, g.model_match)), SETTINGS)


def params_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sb = b.state_dict()
    return max(float((v - sb[k]).abs().max()) for k, v in a.state_dict().items())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    comm = init_distributed("cpu")
    cfg = load_config("configs/phgpo_synthetic.yaml", [
        "phgpo.num_tasks=40", "phgpo.max_length=96", "phgpo.group_size=3",
        "phgpo.evaporate_every=3", "phgpo.supervised_batch_size=7", "phgpo.eval_rollouts=2"])
    data = load_tool_data(cfg)
    data.train = data.train[:16]                      # a short supervised epoch
    dp = build(cfg, data, comm)
    one = build(cfg, data, LOCAL) if comm.is_main else None
    initial = copy.deepcopy(dp.policy)

    dp.supervised_epoch(EpochSettings(1, 0), random.Random(3))
    sl = {}
    if comm.is_main:
        one.supervised_epoch(EpochSettings(1, 0), random.Random(3))
        sl = {"diff": params_diff(dp.policy, one.policy),
              "moved": params_diff(dp.policy, initial)}

    recorded = []
    rollout = dp._rollout
    dp._rollout = lambda *a: recorded.append(rollout(*a)) or recorded[-1]
    tasks = data.train[:5]
    gen = torch.Generator().manual_seed(100 + 7 * comm.rank)
    metrics = dp.rl_epoch(tasks, SETTINGS, gen)
    shares = comm.gather((recorded, digest(dp.store.state_dict()),
                          digest(dp.elite.state_dict()), metrics))
    evaluation = dp.evaluate()
    evals = comm.gather(evaluation)
    if comm.is_main:
        before = copy.deepcopy(one.policy)
        for first in range(0, len(tasks), 2):        # rank r sampled task first + r
            groups = [shares[r][0][first // 2] for r in range(2) if first + r < len(tasks)]
            replay_round(one, tasks[first:first + 2], groups, first)
        result = {
            "sl": sl, "rl_diff": params_diff(dp.policy, one.policy),
            "rl_moved": params_diff(one.policy, before),
            "rounds": [len(s[0]) for s in shares],
            "store_same_on_ranks": shares[0][1] == shares[1][1],
            "elite_same_on_ranks": shares[0][2] == shares[1][2],
            "store_equal_one": shares[0][1] == digest(one.store.state_dict()),
            "elite_equal_one": shares[0][2] == digest(one.elite.state_dict()),
            "elite_size": len(one.elite.general),
            "tau_max": float(one.store.scalar.tool.max()),
            "context_entries": len(one.store.memory),
            "metrics_same_on_ranks": shares[0][3] == shares[1][3],
            "evals_same_on_ranks": evals[0] == evals[1],
            "accuracy": evaluation["eval/next_tool_accuracy"],
            "one_accuracy": one.evaluate()["eval/next_tool_accuracy"]}
        with open(args.out, "w") as f:
            json.dump(result, f)
    comm.barrier()
    return 0


if __name__ == "__main__":
    rc = main()
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
